"""Recipe loading and the cache key (pure)."""

import os
from pathlib import Path

import pytest

from testbed.errors import ImageError
from testbed.image.recipe import load_recipe, recipe_hash

RECIPE = """
[debian]
suite = "trixie"
mirror = "http://mirror.example/debian"
extra_suites = ["trixie-backports"]
packages = ["linux-image-amd64/trixie-backports", "openssh-server"]
[kernel]
require_config = ["CONFIG_PCI_P2PDMA"]
[initramfs]
modules = ["virtio_blk"]
[boot]
cmdline = ["console=ttyS0"]
"""


@pytest.fixture
def tree(tmp_path: Path):
    images = tmp_path / "guest-images"
    (images / "default/rootfs/etc").mkdir(parents=True)
    (images / "default/recipe.toml").write_text(RECIPE)
    (images / "default/rootfs/etc/inittab").write_text("::sysinit:/etc/rc\n")
    (images / "tools").mkdir()
    (images / "tools/p2pdma-guest").write_text("#!/usr/bin/python3\n")
    builder = tmp_path / "builder"
    builder.mkdir()
    (builder / "build.py").write_text("# builder\n")
    return images, builder


def test_hash_is_stable(tree):
    images, builder = tree
    assert recipe_hash(images, builder) == recipe_hash(images, builder)
    assert len(recipe_hash(images, builder)) == 64


@pytest.mark.parametrize("rel", ["default/recipe.toml", "default/rootfs/etc/inittab",
                                 "tools/p2pdma-guest"])
def test_hash_changes_when_a_recipe_file_changes(tree, rel):
    images, builder = tree
    before = recipe_hash(images, builder)
    path = images / rel
    path.write_text(path.read_text() + "# edit\n")
    assert recipe_hash(images, builder) != before


def test_hash_changes_when_a_file_is_added_renamed_or_made_executable(tree):
    images, builder = tree
    h0 = recipe_hash(images, builder)
    (images / "tools/new-tool").write_text("x")
    h1 = recipe_hash(images, builder)
    (images / "tools/new-tool").rename(images / "tools/other-tool")
    h2 = recipe_hash(images, builder)
    os.chmod(images / "tools/other-tool", 0o755)
    h3 = recipe_hash(images, builder)
    assert len({h0, h1, h2, h3}) == 4


def test_hash_covers_builder_sources_but_not_caches(tree):
    images, builder = tree
    h0 = recipe_hash(images, builder)
    (builder / "__pycache__").mkdir()
    (builder / "__pycache__/build.cpython-311.pyc").write_bytes(b"junk")
    (images / "default/recipe.toml~").write_text("editor backup")
    assert recipe_hash(images, builder) == h0
    (builder / "build.py").write_text("# builder v2\n")
    assert recipe_hash(images, builder) != h0


def test_load_recipe(tree):
    images, _ = tree
    r = load_recipe("default", root=images)
    assert r.suite == "trixie"
    assert r.packages[0] == "linux-image-amd64/trixie-backports"
    assert r.sources() == ["deb http://mirror.example/debian trixie main",
                           "deb http://mirror.example/debian trixie-backports main"]
    assert r.tools_dir == images / "tools"
    assert r.cmdline == ("console=ttyS0",)


def test_load_recipe_errors(tree):
    images, _ = tree
    with pytest.raises(ImageError, match="no image recipe"):
        load_recipe("nope", root=images)
    (images / "default/recipe.toml").write_text("[debian]\nsuite = 1 2\n")
    with pytest.raises(ImageError):
        load_recipe("default", root=images)


def test_repository_recipe_loads():
    r = load_recipe()
    assert any(p.startswith("linux-image-amd64/") for p in r.packages)
    assert "CONFIG_PCI_P2PDMA" in r.require_config
    assert any(w.startswith("root=") for w in r.cmdline)
    assert "panic=-1" in r.cmdline


def test_the_repository_names_no_mirror():
    """The image is built from the host's own mirror: the recipe says "host"."""
    assert load_recipe().mirror == "host"
