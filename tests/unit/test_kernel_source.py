"""`testbed kernel source debian`: the cache layout, apt's two configurations (pure: apt is
replaced by recorded answers; tests/integration/test_kernel_profiles.py fetches for real)."""

from __future__ import annotations

import json

import pytest

from testbed.cli import main
from testbed.errors import UsageError
from testbed.kernel import source
from testbed.kernel.source import DebianSource, debian_source, source_of_tree

POLICY = """linux-source-7.3:
  Installed: (none)
  Candidate: 7.3.4-1~bpo13+1
  Version table:
     7.3.4-1~bpo13+1 100
"""
UNKNOWN = "N: Unable to locate package linux-source-9.9\n"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def unpacked(cache, version="7.3.4-1~bpo13+1", package="linux-source-7.3"):
    d = cache / "kernel-sources" / source._dir_name(package, version)
    (d / "linux").mkdir(parents=True)
    (d / "linux" / "Makefile").write_text("VERSION = 7\n")
    (d / "source.json").write_text(json.dumps(
        {"package": package, "version": version, "deb_sha256": "ab" * 32}))
    return d


def test_an_unpacked_source_is_used_without_asking_apt(cache, monkeypatch):
    d = unpacked(cache)

    def no_apt(*a, **k):
        raise AssertionError("apt must not be asked for an unpacked source")
    monkeypatch.setattr(source, "_pick_apt", no_apt)
    src = debian_source()
    assert src.tree == d / "linux" and src.version == "7.3.4-1~bpo13+1"
    assert src.identity == f"debian:linux-source-7.3=7.3.4-1~bpo13+1:{'ab' * 32}"
    assert source_of_tree(d / "linux") == src
    assert source_of_tree(d) is None


def test_kbuild_safe_directory_names():
    name = source._dir_name("linux-source-7.3", "1:7.3.4-1~bpo13+1")
    assert ":" not in name and "~" not in name and "%" not in name


def test_a_half_unpacked_directory_is_not_a_source(cache):
    d = unpacked(cache)
    (d / "source.json").write_text("{not json")
    assert DebianSource.read(d) is None
    d2 = unpacked(cache, version="7.3.5-1")
    (d2 / "linux" / "Makefile").unlink()
    assert DebianSource.read(d2) is None


def test_the_private_apt_configuration_stays_in_the_cache(cache, monkeypatch):
    monkeypatch.setenv("TESTBED_DEBIAN_MIRROR", "http://mirror.invalid/debian")
    calls = []

    def fake_run(self, tool, args, cwd=None):
        calls.append((tool, args, self.options()))
        return POLICY if args[0] == "policy" and self.private else UNKNOWN
    monkeypatch.setattr(source._Apt, "run", fake_run)
    apt, version = source._pick_apt("linux-source-7.3", "trixie-backports")
    assert version == "7.3.4-1~bpo13+1" and apt.private is not None
    private = apt.private
    assert private.is_relative_to(cache)
    assert (private / "sources.list").read_text() == \
        "deb http://mirror.invalid/debian trixie-backports main\n"
    # the host's apt was asked first, with its own configuration
    assert calls[0][0] == "apt-cache" and calls[0][2] == []
    # every private call points apt's state, cache and sources into the private directory
    for tool, args, opts in calls[1:]:
        for key in ("Dir::State", "Dir::Cache", "Dir::Etc::SourceList"):
            assert any(o.startswith(key + "=" + str(private)) for o in opts), (key, opts)
    assert ("apt-get", ["update", "-q"]) in [(t, a) for t, a, _ in calls]


def test_a_package_apt_does_not_know_is_reported(cache, monkeypatch):
    monkeypatch.setenv("TESTBED_DEBIAN_MIRROR", "http://mirror.invalid/debian")
    monkeypatch.setattr(source._Apt, "run", lambda self, tool, args, cwd=None: UNKNOWN)
    with pytest.raises(source.SourceError, match="linux-source-9.9: not in trixie-backports"):
        debian_source("linux-source-9.9")


def test_not_a_source_package(cache, capsys):
    with pytest.raises(UsageError, match="kernel source package"):
        debian_source("linux-image-amd64")
    assert main(["kernel", "source", "debian", "--package", "fio"]) == 2
    err = capsys.readouterr().err
    assert "kernel source package" in err and "Traceback" not in err


def test_cli_prints_the_tree(cache, capsys, monkeypatch):
    d = unpacked(cache)
    monkeypatch.setattr(source, "_pick_apt", lambda *a: pytest.fail("apt asked"))
    assert main(["kernel", "source", "debian"]) == 0
    assert capsys.readouterr().out.strip() == str(d / "linux")
