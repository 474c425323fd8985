"""`testbed kernel build`: input checks, the fragment and the config verification (pure)."""

from __future__ import annotations

import shutil

import pytest

from testbed.cli import main
from testbed.errors import ToolMissing, UsageError
from testbed.kernel.build import (BUILD_PACKAGES, check_build_tools, check_source_tree,
                                  default_fragment, fragment_options, missing_options)


def fake_source(d):
    for p in ("Kconfig", "arch/x86/Kconfig", "scripts/kconfig/merge_config.sh",
              "drivers/pci/Kconfig"):
        (d / p).parent.mkdir(parents=True, exist_ok=True)
        (d / p).write_text("")
    (d / "Makefile").write_text("VERSION = 7\nexport KERNELRELEASE\n")
    return d


def test_not_a_source_tree(tmp_path, capsys):
    with pytest.raises(UsageError, match="not a Linux source tree"):
        check_source_tree(tmp_path)
    with pytest.raises(UsageError, match="no such directory"):
        check_source_tree(tmp_path / "missing")
    (tmp_path / "f").write_text("")
    with pytest.raises(UsageError, match="not a directory"):
        check_source_tree(tmp_path / "f")
    assert main(["kernel", "build", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("testbed: ") and "not a Linux source tree" in err
    assert "Traceback" not in err


def test_a_source_tree_is_accepted_unless_built_in_place(tmp_path):
    src = fake_source(tmp_path)
    assert check_source_tree(src) == src.resolve()
    (src / ".config").write_text("")
    with pytest.raises(UsageError, match="mrproper"):
        check_source_tree(src)


def test_missing_build_tools_name_the_debian_packages(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name, path=None: None if name == "flex"
                        else "/usr/bin/" + name)
    with pytest.raises(ToolMissing) as info:
        check_build_tools()
    msg = str(info.value)
    assert "flex" in msg and BUILD_PACKAGES in msg
    for pkg in ("build-essential", "flex", "bison", "bc", "libelf-dev", "libssl-dev",
                "dwarves"):
        assert pkg in msg


def test_the_fragment_builds_in_everything_the_testbed_needs():
    opts = fragment_options(default_fragment())
    for name in ("PCI_P2PDMA", "ZONE_DEVICE", "MEMORY_HOTPLUG", "MEMORY_HOTREMOVE",
                 "BLK_DEV_NVME", "NVME_CORE", "VIRTIO_PCI", "VIRTIO_BLK", "VIRTIO_NET",
                 "EXT4_FS", "INTEL_IOMMU", "AMD_IOMMU", "VIRTIO_IOMMU", "PVPANIC",
                 "PVPANIC_PCI", "SERIAL_8250_CONSOLE", "DEVTMPFS", "PCIEPORTBUS",
                 "HOTPLUG_PCI_PCIE", "IKCONFIG_PROC", "UNIX", "INET"):
        assert opts.get(f"CONFIG_{name}") == "y", name
    assert opts.get("CONFIG_IOMMU_DEFAULT_DMA_STRICT") == "n"


def test_options_that_did_not_stick_are_reported(tmp_path):
    cfg = tmp_path / ".config"
    cfg.write_text("CONFIG_PCI_P2PDMA=y\nCONFIG_VIRTIO_BLK=m\n# CONFIG_ZONE_DEVICE is not set\n")
    want = {"CONFIG_PCI_P2PDMA": "y", "CONFIG_VIRTIO_BLK": "y", "CONFIG_ZONE_DEVICE": "y",
            "CONFIG_NVME_CORE": "y", "CONFIG_IOMMU_DEFAULT_DMA_STRICT": "n"}
    assert missing_options(want, fragment_options(cfg)) == [
        "CONFIG_VIRTIO_BLK=y (got m)", "CONFIG_ZONE_DEVICE=y (got not set)",
        "CONFIG_NVME_CORE=y (got not set)"]
