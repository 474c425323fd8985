"""Opt-in (not CI): build a kernel from source with `testbed kernel build` and boot it.

    TESTBED_KSRC=/root/ksrc/linux-source-7.3 [TESTBED_KBUILD_OUT=/root/ksrc/build] \\
        .venv/bin/pytest tests/integration/test_kernel_build.py

A first build takes 20-60 minutes on two cores; later runs reuse the configured output
directory and only rebuild what changed. The bzImage must boot the image with no
initramfs and no modules, with P2PDMA working.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.guest.boot import BootOptions, boot
from testbed.kernel.resolve import resolve_kernel
from testbed.run.runner import RunOptions, run_workloads
from testbed.spec import load_topology

KSRC = os.environ.get("TESTBED_KSRC")
# Opt-in, not skipped: tests/integration/conftest.py deselects this module unless
# TESTBED_KSRC names a source tree (a build takes 20-60 min on two cores).
pytestmark = pytest.mark.kernel_build


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = Path(os.environ.get("TESTBED_KBUILD_OUT") or tmp_path_factory.mktemp("kbuild"))
    proc = subprocess.run([sys.executable, "-m", "testbed", "kernel", "build", KSRC,
                           "--output", str(out)], capture_output=True, text=True,
                          timeout=4 * 3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    bz = Path(proc.stdout.strip().splitlines()[-1])
    assert bz == out / "arch/x86/boot/bzImage" and bz.is_file()
    return out


def test_built_kernel_boots_without_initramfs_and_p2p_works(built, real_qemu, tmp_path,
                                                             monkeypatch):
    monkeypatch.setenv("TESTBED_STATE", str(tmp_path / "state"))
    kernel = resolve_kernel(str(built))
    assert kernel.kind == "build-tree" and kernel.p2pdma is True
    assert kernel.modules_dir is None and kernel.initrd is None
    topo = load_topology("switch-cmb")
    with boot(topo, options=BootOptions(kernel=kernel)) as guest:
        assert guest.check(["uname", "-r"]).stdout.strip() == kernel.release
        cfg = guest.check(["sh", "-c", "zcat /proc/config.gz | grep '^CONFIG_PCI_P2PDMA='"])
        assert cfg.stdout.strip() == "CONFIG_PCI_P2PDMA=y"
        assert guest.inventory["kernel"]["p2pdma"] is True
        recs, _ = run_workloads(guest, topo, ["p2p-copy"], RunOptions())
        assert [(r.observed, r.data_verified) for r in recs] == [("ok", True)] * 2, recs
