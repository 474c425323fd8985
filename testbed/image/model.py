"""The built guest image as the rest of the testbed sees it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ImageError

MANIFEST = "manifest.json"
# Printed on the serial console by the guest's /etc/testbed/rc once sshd is
# listening (network configured, initramfs modules loaded): connect then.
READY_MARKER = "p2pdma-testbed: guest ready"


@dataclass(frozen=True)
class Image:
    """A built, cached guest image. All paths are inside ``directory``; never
    write to them (boot ``disk`` through a qcow2 overlay or ``-snapshot``)."""

    directory: Path
    disk: Path  # base.qcow2: ext4 root filesystem, whole disk (no partition table)
    kernel: Path  # what to pass to -kernel: vmlinux (PVH) or the bzImage
    initrd: Path | None  # what to pass to -initrd
    client_key: Path  # ed25519 private key (OpenSSH format) that logs in as root
    host_public_key: str  # "ssh-ed25519 AAAA...": the guest's only host key
    kernel_release: str
    p2pdma: bool  # CONFIG_PCI_P2PDMA=y in the kernel's config
    cmdline: tuple[str, ...]  # kernel command-line words the image needs
    bzimage: Path  # the compressed kernel as Debian ships it
    pvh: bool  # True if ``kernel`` is an ELF vmlinux booted through its PVH note
    # (``bzimage`` is the kernel as Debian ships it: an x86 bzImage, an arm64 Image)
    recipe_hash: str
    user: str = "root"
    ready_marker: str = READY_MARKER
    architecture: str = "amd64"  # dpkg's name: a machine profile's debian_arch

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST

    def manifest(self) -> dict[str, object]:
        return json.loads(self.manifest_path.read_text())

    @property
    def client_public_key(self) -> Path:
        return self.client_key.with_name(self.client_key.name + ".pub")

    @classmethod
    def from_directory(cls, directory: Path) -> "Image":
        """Load a built image from its cache directory (raises ImageError if incomplete)."""
        try:
            m = json.loads((directory / MANIFEST).read_text())
            files = m["files"]
            image = cls(
                directory=directory,
                disk=directory / files["disk"],
                kernel=directory / files["kernel"],
                initrd=directory / files["initrd"] if files.get("initrd") else None,
                client_key=directory / files["client_key"],
                host_public_key=m["host_public_key"],
                kernel_release=m["kernel_release"],
                p2pdma=bool(m["p2pdma"]),
                cmdline=tuple(m["cmdline"]),
                bzimage=directory / files["bzimage"],
                pvh=bool(m["pvh"]),
                recipe_hash=m["recipe_hash"],
                architecture=str(m.get("architecture", "amd64")),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ImageError(f"image in {directory} is incomplete or corrupt: {exc}") from None
        for path in (image.disk, image.kernel, image.initrd, image.client_key, image.bzimage):
            if path is not None and not path.is_file():
                raise ImageError(f"image in {directory} lacks {path.name}")
        return image
