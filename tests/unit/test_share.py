"""--share HOSTDIR[:GUESTDIR][:rw]: the value, its QEMU options, the guest's mount command,
and bad input refused (exit 2, naming the option) before anything starts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from testbed import cli
from testbed.guest.share import mount_command
from testbed.qemu.cmdline import BootMedia, boot_argv
from testbed.qemu.share import Share, check_shares, parse_share


@pytest.fixture
def src(tmp_path) -> Path:
    d = tmp_path / "my src"
    d.mkdir()
    return d


def test_defaults_read_only_on_mnt_name(src):
    s = parse_share(str(src))
    assert (s.host, s.guest, s.writable) == (src.resolve(), "/mnt/my_src", False)
    assert s.spec == f"{src.resolve()}:/mnt/my_src:ro"
    assert parse_share(s.spec) == s  # the canonical form reads back (detached guests)


@pytest.mark.parametrize("suffix, guest, writable", [
    (":/mnt/x", "/mnt/x", False), (":/mnt/x:rw", "/mnt/x", True), (":/mnt/x:ro", "/mnt/x", False),
    (":rw", "/mnt/my_src", True), ("::rw", "/mnt/my_src", True), (":/srv//a/./b/", "/srv/a/b", False),
    (":/root/src", "/root/src", False), (":/tmp/x", "/tmp/x", False), (":/opt/t", "/opt/t", False),
])
def test_forms(src, suffix, guest, writable):
    s = parse_share(f"{src}{suffix}")
    assert (s.guest, s.writable) == (guest, writable)


def test_relative_host_dir_is_made_absolute(src, monkeypatch):
    monkeypatch.chdir(src.parent)
    assert parse_share("my src").host == src.resolve()


@pytest.mark.parametrize("suffix, words", [
    (":mnt/x", "not an absolute path"),
    (":/usr/src", "inside the guest's system directory /usr"),
    (":/usr", "would cover the guest's system directory /usr"),
    (":/usr/local", "inside the guest's system directory /usr"),
    (":/", "root cannot be covered"),
    (":/etc", "system directory /etc"),
    (":/lib/modules/7.3.4", "inside the guest's system directory /lib"),
    (":/root", "would cover the guest's system directory /root/.ssh"),
    (":/tmp", "would cover the guest's /tmp"),
    (":/proc/x", "/proc"),
    (":/mnt/../etc", "'..' is not allowed"),
    (":/mnt/x:wr", "mode 'wr'"),
    (":/mnt/x:rw:extra", "HOSTDIR[:GUESTDIR][:ro|rw]"),
    (":/mnt/a\nb", "control characters"),
])
def test_bad_guest_paths_and_modes(src, suffix, words):
    with pytest.raises(ValueError) as info:
        parse_share(f"{src}{suffix}")
    assert words in str(info.value)


def test_bad_host_dirs(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    for text, words in [(str(tmp_path / "missing"), "no such directory"),
                        (str(f), "not a directory"), ("", "empty host directory"),
                        ("/", "is not shared"), ("/proc", "is not shared")]:
        with pytest.raises(ValueError) as info:
            parse_share(text)
        assert words in str(info.value), text


def test_rw_needs_a_writable_host_dir(src, monkeypatch):
    import testbed.qemu.share as share_module
    real = os.access
    monkeypatch.setattr(share_module.os, "access",  # root may write anywhere: pretend
                        lambda p, mode: real(p, mode) and not mode & os.W_OK)
    with pytest.raises(ValueError, match="not writable"):
        parse_share(f"{src}:/mnt/x:rw")
    assert not parse_share(f"{src}:/mnt/x").writable


def test_two_shares_on_one_guest_dir_or_nested(tmp_path):
    a, b = Share(tmp_path / "a", "/mnt/x"), Share(tmp_path / "b", "/mnt/x")
    with pytest.raises(ValueError, match="both mounted on /mnt/x"):
        check_shares([a, b])
    check_shares([a, Share(tmp_path / "b", "/mnt/xy")])  # a prefix, not a parent


def test_qemu_options_enforce_read_only(src):
    media = BootMedia(kernel=Path("/k"), initrd=None, cmdline=("quiet",), disk=Path("/d"),
                      ssh_port=2222, shares=(Share(src, "/mnt/ro"), Share(src, "/mnt/rw", True)))
    argv = boot_argv(media, "qemu-system-x86_64")
    fsdevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-fsdev"]
    assert fsdevs == [f"local,id=tb-share0,path={src},security_model=none,multidevs=remap,"
                      "readonly=on",
                      f"local,id=tb-share1,path={src},security_model=none,multidevs=remap"]
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]
    assert "virtio-9p-pci,fsdev=tb-share1,mount_tag=tb-share1,id=tb-share1-dev,bus=pcie.0" \
        in devices
    assert "-gdb" not in argv


def test_mount_command_quotes_and_modes(src):
    cmd = mount_command(Share(src, "/mnt/a b; reboot"), 1)
    assert "modprobe" not in cmd  # only the first share loads 9p
    assert cmd.endswith("tb-share1 '/mnt/a b; reboot'") and ",ro " in cmd


# -- the command line: exit 2 naming the option, nothing started ----------------------------

def _exit_of(argv: list[str], capsys) -> tuple[int, str]:
    try:
        status = cli.main(argv)
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    return status, capsys.readouterr().err


@pytest.mark.parametrize("command", ["boot", "run"])
@pytest.mark.parametrize("value, words", [
    ("{missing}", "no such directory"), ("{file}", "not a directory"),
    ("{src}:mnt/x", "not an absolute path"), ("{src}:/usr/src", "system directory /usr"),
    ("{src}:/etc", "system directory /etc"),
])
def test_bad_share_is_exit_2_naming_the_option(command, value, words, src, tmp_path, capsys,
                                               monkeypatch):
    monkeypatch.setenv("TESTBED_STATE", str(tmp_path / "state"))
    (tmp_path / "file").write_text("x")
    value = value.format(missing=tmp_path / "missing", file=tmp_path / "file", src=src)
    status, err = _exit_of([command, "switch-cmb", "--share", value, "--command", "true"]
                           if command == "boot" else [command, "switch-cmb", "--share", value],
                           capsys)
    assert status == 2 and "--share" in err and words in err, err
    assert not (tmp_path / "state").exists()  # nothing was created, let alone started


def test_duplicate_guest_dirs_are_exit_2(src, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TESTBED_STATE", str(tmp_path / "state"))
    status, err = _exit_of(["boot", "switch-cmb", "-c", "true", "--share", f"{src}:/mnt/x",
                            "--share", f"{tmp_path}:/mnt/x:rw"], capsys)
    assert status == 2 and "--share" in err and "both mounted on /mnt/x" in err, err
    assert not (tmp_path / "state").exists()


def test_run_share_with_a_running_guest_is_exit_2(src, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TESTBED_STATE", str(tmp_path / "state"))
    status, err = _exit_of(["run", "switch-cmb", "--guest", "g", "--share", str(src)], capsys)
    assert status == 2 and "--share" in err and "already running" in err, err


def test_run_boots_its_guest_with_the_shares(src, tmp_path, monkeypatch):
    """testbed run passes --share to the boot (and records the failed boot like any)."""
    from testbed.errors import BootFailed
    from testbed.run import runner
    from testbed.spec import load_topology
    seen = []

    def fake_boot(topo, options, caps=None):
        seen.append(options)
        raise BootFailed("stop here")

    monkeypatch.setenv("TESTBED_STATE", str(tmp_path / "state"))
    monkeypatch.setattr(runner, "boot", fake_boot)
    share = parse_share(f"{src}:/mnt/s:rw")
    result, _ = runner.run_topology(load_topology("switch-cmb"), runner.RunOptions(
        shares=(share,), out=tmp_path / "out", workloads=("inventory",)))
    assert [o.shares for o in seen] == [(share,)] and not seen[0].gdb
    assert result.error_kind == "boot-failed"
