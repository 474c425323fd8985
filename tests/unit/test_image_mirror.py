"""The Debian mirror comes from the host's apt configuration (pure: fake /etc/apt trees)."""

from __future__ import annotations

import pytest

from testbed.errors import ImageError
from testbed.image.mirror import ENV, host_sources, pick, resolve_mirror


def apt(tmp_path, sources_list="", **parts):
    (tmp_path / "sources.list.d").mkdir(parents=True)
    (tmp_path / "sources.list").write_text(sources_list)
    for name, text in parts.items():
        (tmp_path / "sources.list.d" / name.replace("_", ".")).write_text(text)
    return tmp_path


def test_deb822_first_archive_source_wins(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    root = apt(tmp_path, debian_sources=(
        "Types: deb\nURIs: http://local.mirror/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://local.mirror/debian\nSuites: bookworm bookworm-updates\n"))
    assert resolve_mirror("host", root) == "http://local.mirror/debian"


def test_one_line_sources_and_disabled_files(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    root = apt(tmp_path, "# a comment\ndeb-src http://src.example/debian bookworm main\n"
               "deb [signed-by=/k.gpg] http://one.example/debian/ bookworm main\n",
               other_list_disabled="deb http://nope.example/debian bookworm main\n")
    assert resolve_mirror("host", root) == "http://one.example/debian"
    assert ("http://nope.example/debian", ("bookworm",)) not in host_sources(root)


def test_third_party_repositories_are_not_a_debian_mirror():
    assert pick([("https://deb.nodesource.com/node_20.x", ("nodistro",)),
                 ("https://packages.example/apt", ("cloud-sdk-bookworm",))]) is None


def test_override_and_explicit_recipe_url(tmp_path, monkeypatch):
    root = apt(tmp_path)
    monkeypatch.setenv(ENV, "http://env.example/debian/")
    assert resolve_mirror("host", root) == "http://env.example/debian"
    monkeypatch.delenv(ENV)
    assert resolve_mirror("http://recipe.example/debian", root) == "http://recipe.example/debian"
    with pytest.raises(ImageError, match=ENV):
        resolve_mirror("host", root)
