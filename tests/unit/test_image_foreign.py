"""The foreign-architecture image build's pure parts: the arm64 recipe, mmdebstrap's
extract-only argv, the package split, the stage disk, the second stage's console protocol.
(The build itself boots an arm64 guest: tests/integration/test_arm64_image.py.)"""

from pathlib import Path

import pytest

from testbed.errors import ImageError
from testbed.image import foreign, stage2
from testbed.image.recipe import load_recipe, recipe_hash
from testbed.image.tree import find_kernel
from testbed.machines import PROFILES


def test_every_machine_has_a_recipe_of_its_architecture():
    for profile in PROFILES.values():
        recipe = load_recipe(profile.image_recipe)
        assert recipe.architecture == profile.debian_arch
        assert recipe.rootfs_dir.is_dir() and recipe.initramfs_init.is_file()


def test_arm64_recipe_shares_the_default_boot_path_and_differs_only_where_it_must():
    x86, arm = load_recipe("default"), load_recipe("arm64")
    assert arm.rootfs_dir == x86.rootfs_dir and arm.initramfs_init == x86.initramfs_init
    assert [p.replace("arm64", "amd64") for p in arm.packages] == list(x86.packages)
    assert "console=ttyAMA0" in arm.cmdline and "console=ttyS0" in x86.cmdline
    assert not arm.prefer_pvh and (arm.directory / foreign.STAGE_SCRIPT).is_file()
    assert recipe_hash(name="arm64") != recipe_hash(name="default")


def test_arm64_hash_covers_the_shared_default_files(tmp_path):
    images = tmp_path / "guest-images"
    for d in ("default/rootfs/etc", "arm64", "tools"):
        (images / d).mkdir(parents=True)
    (images / "default/recipe.toml").write_text("[debian]\n")
    (images / "arm64/recipe.toml").write_text('base = "default"\n[debian]\n')
    (images / "default/rootfs/etc/inittab").write_text("a\n")
    builder = tmp_path / "builder"
    builder.mkdir()
    before = (recipe_hash(images, builder, "arm64"), recipe_hash(images, builder))
    (images / "default/rootfs/etc/inittab").write_text("b\n")
    assert recipe_hash(images, builder, "arm64") != before[0]
    assert recipe_hash(images, builder) != before[1]
    default_now = recipe_hash(images, builder)
    (images / "arm64/recipe.toml").write_text('base = "default"\n[debian]\narchitecture = "arm64"\n')
    assert recipe_hash(images, builder) == default_now  # arm64's own files: not amd64's


def test_a_bad_base_is_an_error(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x/recipe.toml").write_text(
        'base = "../etc"\n[debian]\nsuite = "trixie"\n[kernel]\n[initramfs]\n[boot]\n')
    with pytest.raises(ImageError, match="recipe.toml: base must name"):
        load_recipe("x", root=tmp_path)


def test_extract_argv_spells_minbase_and_runs_nothing_foreign():
    argv = foreign.mmdebstrap_argv(load_recipe("arm64"), "http://m.example/debian", Path("/t"))
    assert "--architectures=arm64" in argv and "--variant=extract" in argv
    assert {"--skip=check/qemu", "--skip=cleanup/apt/cache", "--skip=chroot/mount"} <= set(argv)
    includes = [a for a in argv if a.startswith("--include=")]
    assert includes[:3] == ["--include=?essential", "--include=?priority(required)",
                            "--include=apt"]
    assert "linux-image-arm64/trixie-backports" in includes[3]
    assert argv[-3:] == ["/t", "deb http://m.example/debian trixie main",
                         "deb http://m.example/debian trixie-backports main"]


def test_unknown_variant_is_refused():
    from dataclasses import replace
    recipe = replace(load_recipe("arm64"), variant="buildd")
    with pytest.raises(ImageError, match="variant 'buildd' cannot be built for arm64"):
        foreign.mmdebstrap_argv(recipe, "http://m/debian", Path("/t"))


def test_deb_names_and_the_packages_dpkg_installs():
    names = ["bsdutils_1%3a2.41.5-0+deb13u1_arm64.deb", "linux-image-arm64_7.3.4-1~bpo13+1_arm64.deb",
             "linux-modules-7.3.4+deb13-arm64_7.3.4-1~bpo13+1_arm64.deb",
             "linux-base_4.17~bpo13+1_all.deb", "tiny-initramfs_0.1-6.1_all.deb",
             "python3_3.13.5-1_arm64.deb"]
    debs = [foreign.Deb.from_path(Path(n)) for n in names]
    assert debs[0].version == "1:2.41.5-0+deb13u1"
    kept = [d.package for d in foreign.installable(load_recipe("arm64"), debs)]
    assert kept == ["bsdutils", "python3"]
    with pytest.raises(ImageError, match="unexpected package file name"):
        foreign.Deb.from_path(Path("nope.deb"))


def fake_tree(root: Path) -> None:
    (root / "usr/lib/modules/7.3.4-arm64").mkdir(parents=True)
    (root / "usr/lib/modules/7.3.4-arm64/vmlinuz").write_bytes(b"MZ")
    (root / "usr/lib/modules/7.3.4-arm64/config").write_text("CONFIG_PCI_P2PDMA=y\n")
    (root / "usr/lib/modules/7.3.4-arm64/modules.dep").write_text("")
    (root / "lib").symlink_to("usr/lib")
    (root / "root").mkdir(mode=0o700)
    (root / "etc").mkdir()
    (root / "var/cache/apt/archives").mkdir(parents=True)
    for n in ("dash_0.5.12-12_arm64.deb", "linux-image-arm64_7.3.4-1_arm64.deb"):
        (root / "var/cache/apt/archives" / n).write_bytes(b"!<arch>\n")


def test_an_unpacked_kernel_is_found_where_its_package_puts_it(tmp_path):
    fake_tree(tmp_path)
    release, vmlinuz, config = find_kernel(tmp_path)
    assert release == "7.3.4-arm64" and vmlinuz.name == "vmlinuz" and config.name == "config"


def test_the_stage_disk_holds_debs_list_and_the_testbed_files(tmp_path):
    tree, stage = tmp_path / "root", tmp_path / "stage"
    fake_tree(tree)
    (tree / "root").chmod(0o700)
    installed = foreign.make_stage(load_recipe("arm64"), tree, stage, host_private=b"PRIV",
                                   host_public="ssh-ed25519 AAAAh host", client_public="ssh-ed25519 AAAAc c",
                                   python_check="import os")
    assert sorted(p.name for p in (stage / "debs").iterdir()) == [
        "dash_0.5.12-12_arm64.deb", "linux-image-arm64_7.3.4-1_arm64.deb"]
    assert not list((tree / "var/cache/apt/archives").glob("*.deb"))  # moved, not copied
    assert (stage / "debs.list").read_text() == "dash_0.5.12-12_arm64.deb\n"
    root = stage / "root"
    assert (root / "etc/ssh/ssh_host_ed25519_key").read_bytes() == b"PRIV"
    assert (root / "root/.ssh/authorized_keys").read_text() == "ssh-ed25519 AAAAc c\n"
    assert (root / "usr/sbin/init").readlink() == Path("../bin/busybox")
    assert (root / "root").stat().st_mode & 0o777 == 0o700  # cp -a keeps /root private
    assert "/etc/inittab" in installed
    script = tree / foreign.STAGE_INIT.lstrip("/")
    assert script.stat().st_mode & 0o111 and script.read_text().startswith("#!/usr/bin/dash")


def test_second_stage_console_protocol():
    text = ("[    1.0] Linux version 7.3\ntestbed-stage2: step overlay\r\n"
            "testbed-stage2: step dpkg\nnoise testbed-stage2: ok\n")
    assert stage2._markers(text) == ["step overlay", "step dpkg"]
    assert stage2._verdict(text) is None
    assert stage2._verdict(text + "testbed-stage2: FAILED: dpkg --install exited with status 1\n") \
        == "FAILED: dpkg --install exited with status 1"
    assert stage2._verdict(text + "testbed-stage2: ok\n") == "ok"


def test_second_stage_argv_boots_the_image_kernel_with_both_disks(tmp_path):
    profile = stage2.guest_profile("arm64")
    assert profile.arch == "aarch64"
    argv = stage2.stage2_argv(profile, "qemu-system-aarch64", Path("/i/vmlinuz"), Path("/i/initrd"),
                              Path("/w,x/root.raw"), Path("/w/stage.raw"), Path("/w/c.log"),
                              Path("/w/q.sock"), foreign.STAGE_INIT)
    assert argv[argv.index("-machine") + 1] == "virt,gic-version=3"
    append = argv[argv.index("-append") + 1]
    assert "console=ttyAMA0" in append and f"init={foreign.STAGE_INIT}" in append
    drives = [argv[i + 1] for i, a in enumerate(argv) if a == "-drive"]
    assert drives[0].startswith("file=/w,,x/root.raw,") and "readonly=on" in drives[1]
    with pytest.raises(ImageError, match="cannot boot a riscv64 guest"):
        stage2.guest_profile("riscv64")
