"""The CI profile kernel (base+vfio-iommufd+coverage, from linux-source-7.3) on real guests:
it boots with the Debian image and no modules, and the verdicts, the mechanisms the kernel
chose and the IOMMU isolation match the predictions, on switch-cmb and under a vIOMMU.

The kernel comes from the session fixture ``profile_kernel`` (tests/integration/conftest.py):
built once per machine, then found in the cache."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from testbed.kernel.config import Kconfig

pytestmark = pytest.mark.profile_kernel

TESTBED = [sys.executable, "-m", "testbed"]


def cli(*args, tmp_path, timeout=900):
    return subprocess.run([*TESTBED, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TESTBED_STATE": str(tmp_path / "state")})


def test_the_ci_profile_kernel_has_what_it_was_asked_for(profile_kernel):
    k = profile_kernel
    assert k.kind == "profile" and k.profiles == ("base", "vfio-iommufd", "coverage")
    assert k.modules_dir is None and k.release.startswith("7.3.")
    cfg = Kconfig.read(k.config_file)
    for opt in ("CONFIG_PCI_P2PDMA", "CONFIG_IOMMUFD", "CONFIG_VFIO_DEVICE_CDEV",
                "CONFIG_VFIO_PCI_DMABUF", "CONFIG_IOMMUFD_TEST", "CONFIG_GCOV_KERNEL",
                "CONFIG_VIRTIO_BLK", "CONFIG_EXT4_FS", "CONFIG_BLK_DEV_NVME"):
        assert cfg.builtin(opt), opt
    assert not cfg.enabled("CONFIG_GCOV_PROFILE_ALL")
    assert hashlib.sha256(k.config_file.read_bytes()).hexdigest() == k.config_sha256
    tree = k.build_tree
    assert (tree / "vmlinux").is_file() and (tree / "Module.symvers").is_file()
    # per-file coverage: the P2P files have notes, the rest of the kernel none
    assert (tree / "drivers/pci/p2pdma.gcno").is_file()
    assert (tree / "kernel/dma/mapping.gcno").is_file()
    assert (tree / "drivers/iommu/iommufd/main.gcno").is_file()
    assert not (tree / "drivers/pci/probe.gcno").exists()
    assert not (tree / "kernel/fork.gcno").exists()


def test_boot_prints_the_profile_and_the_guest_runs_it(profile_kernel, real_qemu, tmp_path):
    """`testbed boot --kernel profile:...`: what it runs with, and the guest has it: the
    config, /dev/iommu, the VFIO cdev support and gcov data for p2pdma.c."""
    spec = "profile:base+vfio-iommufd+coverage"
    cmd = ("uname -r; zcat /proc/config.gz | grep -E '^CONFIG_(IOMMUFD|GCOV_KERNEL)='; "
           "test -c /dev/iommu && echo iommu-dev; mount -t debugfs none /sys/kernel/debug; "
           "find /sys/kernel/debug/gcov -name p2pdma.gcda | head -1")
    res = cli("boot", "switch-cmb", "--kernel", spec, "-c", cmd, tmp_path=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"kernel: profile base+vfio-iommufd+coverage ({profile_kernel.release})" in res.stderr
    assert profile_kernel.config_sha256 in res.stderr
    assert "vfio-iommufd: CONFIG_IOMMUFD=y" in res.stderr
    assert "coverage: gcov for drivers/pci/p2pdma.c" in res.stderr
    out = res.stdout.split()
    assert out[0] == profile_kernel.release
    assert "CONFIG_IOMMUFD=y" in out and "CONFIG_GCOV_KERNEL=y" in out and "iommu-dev" in out
    assert any(x.endswith("drivers/pci/p2pdma.gcda") for x in out), res.stdout


@pytest.mark.parametrize("topology", ["switch-cmb", "switch-cmb-intel-iommu"])
def test_verdicts_mechanisms_and_isolation_match_the_predictions(topology, profile_kernel,
                                                                 real_qemu, tmp_path):
    out = tmp_path / "out"
    res = cli("run", topology, "--kernel", "profile:base+vfio-iommufd+coverage",
                  "-w", "p2p-copy", "-w", "isolation", "--size", "256K", "--out", str(out),
                  tmp_path=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    assert data["status"] == "pass" and data["finished"] is True
    kernel = data["kernel"]
    assert kernel["release"] == profile_kernel.release and kernel["p2pdma"] is True
    assert kernel["profiles"] == "base+vfio-iommufd+coverage"
    assert kernel["config_sha256"] == profile_kernel.config_sha256
    copies = [w for w in data["workloads"] if w["name"] == "p2p-copy"]
    assert len(copies) == 2 and all(w["passed"] for w in copies), copies
    for w in copies:  # switch-cmb: ok by bus address; intel strict: the predicted fault
        assert w["observed"] == w["predicted"], w
    # the map type the kernel chose, seen through kretprobes (no BTF in this profile): the
    # judge fails a run whose observed mechanism differs; here it must have been observed
    observed = [w for w in copies if w.get("observed_map_type")]
    assert observed, [w.get("mechanism") for w in copies]
    assert all(w["observed_map_type"] == w["predicted_map_type"] for w in observed), observed
    groups = [w for w in data["workloads"] if w["name"] == "isolation"]
    assert groups and all(w["passed"] and w["observed"] == w["predicted"] for w in groups), \
        groups
    report = (out / "report.md").read_text()
    assert "kernel profile set: base+vfio-iommufd+coverage" in report
    assert profile_kernel.config_sha256 in report


def test_a_git_tree_is_configured_out_of_tree_and_left_untouched(tmp_path):
    """A user's git tree as the source: linux-source-7.3 as a git repository (of symlinks
    to the unpacked tree, so no 1.8 GB copy), one uncommitted change, `--check` (configure
    + the subset check; the compile is the same make as for the Debian tree, measured by
    hand from a full git copy: README).  The source identity is git's (HEAD + the
    uncommitted change), and nothing is written into the tree (git status unchanged)."""
    from testbed.kernel.profile_build import source_identity
    from testbed.kernel.source import debian_source
    repo = tmp_path / "linux"
    subprocess.run(["cp", "-as", str(debian_source().tree), str(repo)], check=True,
                   timeout=600)
    # gc.auto=0: no detached 'git gc' outlives the test
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "-c",
           "gc.auto=0"]
    for args in (["init", "-q"], ["add", "-f", "-A", "."], ["commit", "-qm", "tree"]):
        subprocess.run([*git, *args], check=True, timeout=600, capture_output=True)
    clean = source_identity(repo)
    assert clean.startswith("git:")
    # an uncommitted change: the link replaced by a file (never write through the link:
    # it points into the shared unpacked tree)
    link = repo / "drivers/pci/p2pdma.c"
    text = link.read_text()
    link.unlink()
    link.write_text(text + "/* a local change */\n")
    changed = source_identity(repo)
    assert changed.startswith("git:") and changed != clean
    status = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True,
                            check=True, timeout=600).stdout
    out = tmp_path / "build"
    res = cli("kernel", "build", str(repo), "--profile", "hmm", "--check", "--output",
              str(out), tmp_path=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "options of base+hmm are set as asked" in res.stderr, res.stderr[-2000:]
    assert Kconfig.parse((out / ".config").read_text()).builtin("CONFIG_TEST_HMM")
    assert subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True,
                          check=True, timeout=600).stdout == status
    assert source_identity(repo) == changed
