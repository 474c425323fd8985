"""`testbed bisect` exit codes as `git bisect run` reads them, on real guests, with no
kernel build: 0 (the image's kernel, judged by the oracle), 1 (a judged mismatch: a
topology whose stated mechanism is wrong), 125 (a kernel that cannot boot: the image's
bzImage alone; a tree make rejects at once)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTBED = [sys.executable, "-m", "testbed"]
TOPOLOGIES = Path(__file__).resolve().parents[1] / "topologies"
FAST = ["-w", "p2p-copy", "--pair", "nvme0:nvme1", "--size", "256K"]


def bisect(*args, tmp_path, cwd=None, timeout=600):
    return subprocess.run([*TESTBED, "bisect", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd,
                          env={**os.environ, "TESTBED_STATE": str(tmp_path / "state")})


def test_good_kernel_exits_0(real_qemu, tmp_path):
    out = tmp_path / "out"
    res = bisect("switch-cmb", "--kernel", "default", *FAST, "--out", str(out),
                 tmp_path=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "bisect: good (exit 0): 1 judged record(s) as the oracle says" in res.stdout
    assert json.loads((out / "results.json").read_text())["status"] == "pass"


def test_judged_mismatch_exits_1(real_qemu, tmp_path):
    res = bisect(str(TOPOLOGIES / "wrong-mechanism.yaml"), "--kernel", "default", *FAST,
                 "--out", str(tmp_path / "out"), tmp_path=tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr
    assert ("differs: p2p-copy nvme0->nvme1: mechanism: predicted host-bridge, observed "
            "bus-address") in res.stdout
    assert "bisect: bad (exit 1)" in res.stdout


def test_kernel_that_does_not_boot_exits_125(real_qemu, tmp_path):
    """Debian's bzImage without its initramfs cannot mount the root: a skip, found on the
    console's panic line within seconds."""
    from testbed.image.build import ensure_image
    lone = tmp_path / "bzImage"
    shutil.copyfile(ensure_image().bzimage, lone)
    res = bisect("switch-cmb", "--kernel", str(lone), *FAST, "--out", str(tmp_path / "out"),
                 tmp_path=tmp_path)
    assert res.returncode == 125, res.stdout + res.stderr
    assert "bisect: skip (exit 125): the kernel does not boot (boot-failed)" in res.stdout
    assert "Unable to mount root fs" in res.stdout


def test_tree_that_does_not_build_exits_125(tmp_path):
    """A source tree make rejects at once (from the current directory, as git bisect runs
    it): a skip, with make's words and the commit."""
    missing = [t for t in ("git", "make", "gcc", "flex", "bison", "pahole") if not shutil.which(t)]
    if missing:
        reason = (f"{', '.join(missing)} missing (scripts/setup-host.sh installs them): the "
                  "tree-does-not-build test did NOT run")
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    tree = tmp_path / "linux"
    for d in ("arch/x86", "scripts/kconfig", "drivers/pci"):
        (tree / d).mkdir(parents=True)
    (tree / "Makefile").write_text("KERNELRELEASE = broken\n$(error this commit does not "
                                   "build)\n")
    for f in ("Kconfig", "arch/x86/Kconfig", "drivers/pci/Kconfig",
              "scripts/kconfig/merge_config.sh"):
        (tree / f).write_text("")
    git = ["git", "-C", str(tree), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "broken"], check=True)
    head = subprocess.run([*git, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    build = tmp_path / "build"
    res = bisect("switch-cmb", "--build-dir", str(build), *FAST, tmp_path=tmp_path, cwd=tree,
                 timeout=120)
    assert res.returncode == 125, res.stdout + res.stderr
    assert f"bisect: {head} skip (exit 125): the tree does not build: make defconfig " \
           "failed" in res.stdout
    assert "this commit does not build" in res.stdout
    assert (build / "testbed-build.log").is_file()
    assert not (tmp_path / "state").exists()  # nothing booted
