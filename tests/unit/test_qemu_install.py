"""QEMU installations (pure: fake roots in temporary directories, no mmdebstrap, no QEMU).

A fake root's "loader" is a shell script that runs the program it is given, the way
ld.so does, so the install's bookkeeping (run the programs, write the manifest, publish
by rename, point the name) is exercised for real; the real install is the
``qemu_install`` integration tests'."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from testbed.errors import QemuNotFound, UsageError
from testbed.image import qemu_root
from testbed.qemu import binary, installed
from testbed.qemu.binary import Qemu, from_path, from_root, inside_root
from testbed.qemu.installed import installations, remove, resolve_qemu

LOADER_SCRIPT = '#!/bin/sh\n# fake ld.so: LOADER --library-path DIRS PROGRAM ARGS...\nshift 2\nexec "$@"\n'


def _exe(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def fake_root(root: Path, version: str = "11.1.3", loader: bool = True,
              programs=("qemu-system-x86_64", "qemu-system-aarch64")) -> Path:
    """A tree laid out like a Debian root with QEMU: usr/lib64 via a merged-usr symlink,
    the loader as a relative symbolic link, like Debian's."""
    libdir = root / "usr/lib/x86_64-linux-gnu"
    libdir.mkdir(parents=True)
    (root / "usr/lib64").mkdir(parents=True)
    os.symlink("usr/lib64", root / "lib64")
    os.symlink("usr/lib", root / "lib")
    if loader:
        _exe(libdir / "ld-linux-x86-64.so.2", LOADER_SCRIPT)
        os.symlink("../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
                   root / "usr/lib64/ld-linux-x86-64.so.2")
    for p in programs:
        _exe(root / "usr/bin" / p, f"#!/bin/sh\necho 'QEMU emulator version {version} (fake)'\n")
    (root / "usr/share/qemu").mkdir(parents=True)
    (root / "usr/share/seabios").mkdir(parents=True)
    status = root / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True)
    status.write_text(f"Package: qemu-system-x86\nStatus: install ok installed\n"
                      f"Version: 1:{version}+ds-1\n\nPackage: libc6\n"
                      "Status: install ok installed\nVersion: 2.41-12\n")
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_root_runs_through_its_own_loader_with_its_firmware_and_modules(tmp_path):
    root = fake_root(tmp_path / "r")
    q = from_root(root, "mine")
    assert q.loader == str(root / "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    assert q.argv[1:3] == ["--library-path",
                           f"{root}/usr/lib/x86_64-linux-gnu:{root}/lib/x86_64-linux-gnu"]
    assert q.argv[3] == str(root / "usr/bin/qemu-system-x86_64")
    assert q.argv[4:] == ["-L", f"{root}/usr/share/qemu", "-L", f"{root}/usr/share/seabios"]
    assert q.environ({"PATH": "/bin"}) == {
        "PATH": "/bin", "QEMU_MODULE_DIR": f"{root}/usr/lib/x86_64-linux-gnu/qemu"}
    assert "QEMU emulator version 11.1.3" in q.run(["--version"])
    assert q.exports() == [f"export QEMU_MODULE_DIR={root}/usr/lib/x86_64-linux-gnu/qemu"]


def test_the_same_root_names_its_aarch64_program(tmp_path):
    q = from_root(fake_root(tmp_path / "r"), "mine")
    arm = q.for_program("qemu-system-aarch64")
    assert arm.binary.endswith("/usr/bin/qemu-system-aarch64") and arm.loader == q.loader
    assert "11.1.3" in arm.run(["--version"])
    with pytest.raises(QemuNotFound, match="has no qemu-system-riscv64"):
        q.for_program("qemu-system-riscv64")


def test_a_root_without_its_loader_is_refused(tmp_path):
    root = fake_root(tmp_path / "r", loader=False)
    with pytest.raises(QemuNotFound, match="dynamic loader /lib64/ld-linux-x86-64.so.2 is missing"):
        from_root(root, "broken")
    with pytest.raises(QemuNotFound, match="dynamic loader"):
        from_path(str(root))


def test_a_root_without_qemu_is_refused(tmp_path):
    root = fake_root(tmp_path / "r", programs=())
    with pytest.raises(QemuNotFound, match="no /usr/bin/qemu-system-x86_64"):
        from_root(root, "empty")


def test_absolute_links_resolve_inside_the_root(tmp_path):
    root = tmp_path / "r"
    (root / "a").mkdir(parents=True)
    os.symlink("/a", root / "b")
    os.symlink("/b/../a/x", root / "c")
    assert inside_root(root, "/b/x") == root / "a/x"
    assert inside_root(root, "/c") == root / "a/x"
    os.symlink("/loop", root / "loop")
    with pytest.raises(QemuNotFound, match="loop of symbolic links"):
        inside_root(root, "/loop")


def test_paths(tmp_path):
    root = fake_root(tmp_path / "r")
    inside = from_path(str(root / "usr/bin/qemu-system-aarch64"))
    assert inside.loader and inside.program == "qemu-system-aarch64"
    assert from_path(str(root)).program == "qemu-system-x86_64"
    plain = tmp_path / "not-exec"
    plain.write_text("x")
    with pytest.raises(QemuNotFound, match="not found or not executable .not an executable program"):
        from_path(str(plain))
    with pytest.raises(QemuNotFound, match="not found or not executable .no such file"):
        from_path(str(tmp_path / "nothing"))
    host_like = _exe(tmp_path / "bin/qemu-system-x86_64", "#!/bin/sh\n")
    assert from_path(str(host_like)) == Qemu(str(host_like), str(host_like))


def test_identity_changes_with_the_program(tmp_path):
    root = fake_root(tmp_path / "r")
    a = from_root(root, "x").identity()
    prog = root / "usr/bin/qemu-system-x86_64"
    prog.write_text(prog.read_text() + "# changed\n")
    assert from_root(root, "x").identity() != a


def _publish(cache: Path, name: str, version: str, key: str) -> Path:
    d = cache / "qemu/roots" / key
    if not d.exists():
        fake_root(d / "root", version)
    (d / "manifest.json").write_text(json.dumps({"key": key, "qemu_version": version}))
    (cache / "qemu/names").mkdir(parents=True, exist_ok=True)
    (cache / "qemu/names" / f"{name}.json").write_text(json.dumps({"key": key}))
    return d


def test_names_and_versions_resolve(cache):
    _publish(cache, "tb", "11.1.3", "k1")
    _publish(cache, "old", "10.0.13", "k2")
    assert [i.name for i in installations()] == ["old", "tb"]
    for spec in ("tb", "11.1", "11", "11.1.3"):
        q = resolve_qemu(spec)
        assert q.name == "tb" and q.version == "11.1.3" and q.root == str(cache / "qemu/roots/k1/root")
    assert resolve_qemu("10.0").name == "old"
    with pytest.raises(QemuNotFound, match=r"no QEMU 'nope'.*installed: old \(10.0.13\), tb"):
        resolve_qemu("nope")
    with pytest.raises(QemuNotFound, match="no QEMU '12'"):
        resolve_qemu("12")


def test_ambiguous_versions_are_refused(cache):
    _publish(cache, "a", "11.1.3", "k1")
    _publish(cache, "b", "11.1.4", "k2")
    with pytest.raises(QemuNotFound, match="ambiguous"):
        resolve_qemu("11.1")
    assert resolve_qemu("11.1.4").name == "b"


def test_an_unpublished_root_is_never_used(cache):
    d = _publish(cache, "half", "11.1.3", "k1")
    (d / "manifest.json").unlink()  # what an interrupted publish would look like
    assert installations() == []
    with pytest.raises(QemuNotFound, match="no QEMU 'half'"):
        resolve_qemu("half")


def test_a_broken_install_is_reported(cache):
    d = _publish(cache, "tb", "11.1.3", "k1")
    (d / "root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2").unlink()
    with pytest.raises(QemuNotFound, match="dynamic loader"):
        resolve_qemu("tb")


def test_remove(cache):
    _publish(cache, "a", "11.1.3", "k1")
    _publish(cache, "b", "11.1.3", "k1")  # two names, one root
    _publish(cache, "c", "10.0.13", "k2")
    remove("a")
    assert (cache / "qemu/roots/k1").is_dir()  # b still uses it
    remove("b")
    assert not (cache / "qemu/roots/k1").exists()
    assert [i.name for i in installations()] == ["c"]
    with pytest.raises(UsageError, match="no such installation"):
        remove("b")
    with pytest.raises(UsageError, match="not the testbed's to remove"):
        remove("host")


def test_bad_names(cache):
    for bad in ("../x", "", "host", "a/b", "-x"):
        with pytest.raises(UsageError):
            installed.check_name(bad)
    with pytest.raises(UsageError, match="not a known source"):
        qemu_root.install("bookworm-forever")


def _fake_mmdebstrap(version: str = "11.1.3", fail: BaseException | None = None):
    def run(src, mirror, target):
        assert mirror == "http://mirror.example/debian" and src.name == "trixie-backports"
        fake_root(target, version)
        if fail is not None:
            raise fail
    return run


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("TESTBED_DEBIAN_MIRROR", "http://mirror.example/debian")


def test_install_publishes_and_reuses(cache, offline, monkeypatch):
    monkeypatch.setattr(qemu_root, "_mmdebstrap", _fake_mmdebstrap())
    inst = qemu_root.install("trixie-backports")
    assert inst.name == "trixie-backports" and inst.version == "11.1.3"
    m = inst.manifest
    assert m["packages"] == {"libc6": "2.41-12", "qemu-system-x86": "1:11.1.3+ds-1"}
    assert m["version_text"]["qemu-system-aarch64"].startswith("QEMU emulator version 11.1.3")
    assert not list((cache / "qemu/roots").glob(".tmp-*"))
    assert resolve_qemu("11.1").root == str(inst.root)
    # installed: reused without building
    monkeypatch.setattr(qemu_root, "_mmdebstrap", _fake_mmdebstrap(fail=AssertionError("built")))
    assert qemu_root.install("trixie-backports").key == inst.key
    # a second name with the same packages shares the root
    monkeypatch.setattr(qemu_root, "_mmdebstrap", _fake_mmdebstrap())
    assert qemu_root.install("trixie-backports", name="again").key == inst.key
    assert len([d for d in (cache / "qemu/roots").iterdir()]) == 1


def test_update_to_new_versions_replaces_the_root(cache, offline, monkeypatch):
    monkeypatch.setattr(qemu_root, "_mmdebstrap", _fake_mmdebstrap("11.1.3"))
    old = qemu_root.install("trixie-backports")
    monkeypatch.setattr(qemu_root, "_mmdebstrap", _fake_mmdebstrap("11.1.4"))
    new = qemu_root.install("trixie-backports", update=True)
    assert new.key != old.key and new.version == "11.1.4"
    assert not old.directory.exists()  # nothing refers to it any more


def test_an_interrupted_install_leaves_nothing_that_is_used(cache, offline, monkeypatch):
    monkeypatch.setattr(qemu_root, "_mmdebstrap", _fake_mmdebstrap(fail=KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        qemu_root.install("trixie-backports")
    assert installations() == []
    assert not list((cache / "qemu/roots").iterdir())
    # a killed install (no cleanup at all) leaves a .tmp- directory: never used, removed
    stale = cache / "qemu/roots/.tmp-999999"
    fake_root(stale / "root")
    with pytest.raises(QemuNotFound):
        resolve_qemu("trixie-backports")
    monkeypatch.setattr(qemu_root, "_mmdebstrap", _fake_mmdebstrap())
    qemu_root.install("trixie-backports")
    assert not stale.exists()


def test_a_broken_installed_root_is_installed_again(cache, offline, monkeypatch):
    monkeypatch.setattr(qemu_root, "_mmdebstrap", _fake_mmdebstrap())
    inst = qemu_root.install("trixie-backports")
    (inst.root / "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2").unlink()
    again = qemu_root.install("trixie-backports")
    assert again.key == inst.key and again.qemu().run(["--version"])


def test_a_root_whose_qemu_does_not_run_is_not_published(cache, offline, monkeypatch):
    def bad(src, mirror, target):
        fake_root(target)
        _exe(target / "usr/bin/qemu-system-x86_64", "#!/bin/sh\necho 'no GLIBC' >&2\nexit 127\n")
    monkeypatch.setattr(qemu_root, "_mmdebstrap", bad)
    with pytest.raises(QemuNotFound, match="status 127.*no GLIBC"):
        qemu_root.install("trixie-backports")
    assert installations() == [] and not list((cache / "qemu/roots").iterdir())


def test_host_is_the_program_on_path(tmp_path, monkeypatch):
    prog = _exe(tmp_path / "bin/qemu-system-x86_64", "#!/bin/sh\n")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert resolve_qemu("host") == Qemu("host", str(prog))
    assert resolve_qemu("qemu-system-x86_64").binary == str(prog)
    monkeypatch.setenv("PATH", str(tmp_path / "none"))
    with pytest.raises(QemuNotFound, match="the host has no qemu-system-x86_64"):
        binary.host()


# -- choosing a QEMU on the command line (bad input: exit 2, nothing started) ----------------

def _cli(*argv: str) -> int:
    from testbed.cli import main
    return main(list(argv))


def test_bad_qemu_options_exit_2_naming_the_option(cache, tmp_path, capsys):
    plain = tmp_path / "plain"
    plain.write_text("not a program")
    broken = fake_root(tmp_path / "broken", loader=False)
    for spec, why in ((str(plain), "not an executable program"),
                      (str(broken), "dynamic loader /lib64/ld-linux-x86-64.so.2 is missing"),
                      ("trixie-backports", "no QEMU 'trixie-backports'"),
                      (str(tmp_path / "nothing"), "no such file")):
        for command in (["validate"], ["boot", "-c", "true"], ["run", "-w", "p2p-copy"],
                        ["render"], ["verify"]):
            assert _cli(command[0], "--qemu", spec, *command[1:], "switch-cmb") == 2, \
                (command, spec)
            err = capsys.readouterr().err
            assert f"--qemu {spec}: " in err and why in err, (command, err)
    assert _cli("matrix", "-t", "switch-cmb", "-k", "default", "-q", "host", "-q",
                str(plain)) == 2
    assert f"--qemu {plain}: " in capsys.readouterr().err


def test_matrix_takes_q_for_qemu_and_keeps_quiet(capsys):
    from testbed.cli import build_parser
    args = build_parser().parse_args(["matrix", "-t", "switch-cmb", "-k", "default",
                                      "-q", "host", "-q", "11.1", "--quiet"])
    assert args.qemu == ["host", "11.1"] and args.verbosity == -1
    assert build_parser().parse_args(["run", "-q", "switch-cmb"]).verbosity == -1
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["matrix", "-t", "x", "-k", "default",
                                   "--mbps-tolerance", "150"])
    assert exc.value.code == 2


def test_a_topology_on_another_qemu(tmp_path):
    from testbed.qemu.validate import load_checked
    root = fake_root(tmp_path / "r")
    topo = load_checked("switch-cmb", probe_qemu=False, qemu=str(root))
    assert topo.machine.qemu == str(root)
    assert load_checked("switch-cmb", probe_qemu=False, qemu="11.1").machine.qemu == "11.1"
    assert load_checked("switch-cmb", probe_qemu=False).machine.qemu == "qemu-system-x86_64"
