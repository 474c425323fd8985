"""`testbed kernel source debian`: Debian's linux-source-7.3, fetched and unpacked once.

The first call fetches ~170 MB and unpacks it (~40 s); every later call (and the profile
kernel fixture) finds the unpacked tree in the cache without asking apt."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from testbed.kernel.source import DebianSource, source_of_tree


def _source() -> tuple[Path, float]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "testbed", "kernel", "source", "debian"],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return Path(proc.stdout.strip()), time.monotonic() - start


def test_debian_source_is_the_image_kernels_source_and_unpacked_once():
    tree, _ = _source()
    makefile = (tree / "Makefile").read_text()
    assert re.search(r"^VERSION = 7$", makefile, re.M), makefile[:200]
    assert re.search(r"^PATCHLEVEL = 3$", makefile, re.M), makefile[:200]
    assert (tree / "drivers/pci/p2pdma.c").is_file()
    src = source_of_tree(tree)
    assert isinstance(src, DebianSource) and src.package == "linux-source-7.3"
    assert src.version.startswith("7.3.") and len(src.deb_sha256) == 64
    before = (tree / "Makefile").stat().st_mtime_ns
    again, _ = _source()
    assert again == tree and (tree / "Makefile").stat().st_mtime_ns == before


def test_a_profile_option_kconfig_drops_or_does_not_know_is_named_with_the_reason(tmp_path):
    """The typed Kconfig check on the real tree, before anything compiles (~1 min)."""
    bad = tmp_path / "wants-too-much.config"
    bad.write_text("# summary: asks for an option 7.3 does not have and one whose "
                   "dependencies are off\n# CONFIG_TEST_HMM needs RUNTIME_TESTING_MENU\n"
                   "# and THP, DEVICE_PRIVATE\nCONFIG_NO_SUCH_OPTION=y\nCONFIG_TEST_HMM=y\n")
    proc = subprocess.run([sys.executable, "-m", "testbed", "kernel", "build", "debian",
                           "--profile", str(bad), "--check", "--output", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    err = proc.stderr
    assert "CONFIG_NO_SUCH_OPTION=y (profile wants-too-much): unknown to this kernel's " \
           "Kconfig" in err
    assert "CONFIG_TEST_HMM=y (profile wants-too-much): got n; depends on " \
           "RUNTIME_TESTING_MENU [=n]" in err
    assert "(lib/Kconfig.debug:" in err and "unmet: RUNTIME_TESTING_MENU" in err
    assert not (tmp_path / "o" / "vmlinux").exists()
