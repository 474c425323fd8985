"""The image cache: fast path, lock, host-tool checks (pure: no mmdebstrap, no QEMU)."""

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from testbed.errors import ImageError, ToolMissing
from testbed.image import build
from testbed.image.model import MANIFEST, Image


def fake_image(directory: Path, key: str) -> None:
    directory.mkdir(parents=True)
    for name in ("base.qcow2", "vmlinux", "vmlinuz", "initrd.cpio", "id_ed25519"):
        (directory / name).write_bytes(b"x")
    (directory / MANIFEST).write_text(json.dumps({
        "recipe_hash": key, "kernel_release": "7.3.4", "p2pdma": True, "pvh": True,
        "cmdline": ["console=ttyS0", "root=/dev/vda"], "host_public_key": "ssh-ed25519 AAAAtest",
        "files": {"disk": "base.qcow2", "kernel": "vmlinux", "bzimage": "vmlinuz",
                  "initrd": "initrd.cpio", "client_key": "id_ed25519"},
    }))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path))
    monkeypatch.setattr(build, "recipe_hash", lambda name="default": "k" * 64)
    return tmp_path / "images"


def test_cached_image_is_returned_without_building(cache, monkeypatch):
    fake_image(cache / ("k" * 64), "k" * 64)
    monkeypatch.setattr(build, "_build_locked", lambda *a: pytest.fail("must not build"))
    t0 = time.monotonic()
    image = build.ensure_image()
    assert time.monotonic() - t0 < 1.0
    assert isinstance(image, Image)
    assert image.p2pdma and image.pvh and image.kernel.name == "vmlinux"
    assert image.host_public_key == "ssh-ed25519 AAAAtest"


def test_concurrent_builds_build_once(cache, monkeypatch):
    calls = []

    def slow_build(key, recipe, profile):
        calls.append(key)
        time.sleep(0.3)
        fake_image(cache / key, key)
        return Image.from_directory(cache / key)

    monkeypatch.setattr(build, "_build_locked", slow_build)
    monkeypatch.setattr(build, "load_recipe", lambda name: None)
    results = []
    threads = [threading.Thread(target=lambda: results.append(build.ensure_image())) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["k" * 64]
    assert len(results) == 3 and len({r.directory for r in results}) == 1


def test_incomplete_cache_entry_is_not_used(cache):
    fake_image(cache / ("k" * 64), "k" * 64)
    (cache / ("k" * 64) / "vmlinux").unlink()
    assert build.cached_image() is None
    with pytest.raises(ImageError, match="lacks vmlinux"):
        Image.from_directory(cache / ("k" * 64))


def test_missing_host_tool_names_the_debian_package(monkeypatch):
    real = shutil.which
    monkeypatch.setattr(shutil, "which",
                        lambda name, path=None: None if name == "mke2fs" else real(name, path=path))
    with pytest.raises(ToolMissing) as info:
        build.check_host_tools()
    assert info.value.package == "e2fsprogs"
    assert "apt-get install e2fsprogs" in str(info.value)
