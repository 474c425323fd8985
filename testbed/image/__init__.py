"""The guest image: a Debian trixie root filesystem with the trixie-backports
kernel (CONFIG_PCI_P2PDMA=y), its own tiny initramfs and a lean boot path
(busybox init, static network, sshd; no systemd, no udev).

    from testbed.image import ensure_image
    image = ensure_image(progress=print)
    argv = ["qemu-system-x86_64", *image.kernel_args(), ...]

Modules: recipe (recipe file + cache key), build (mmdebstrap, mke2fs, qcow2,
cache and lock), kernel (config check, vmlinux/PVH extraction), kmod
(modules.dep resolution), initramfs (the cpio contents), cpio (newc writer),
keys (ed25519 key pairs), model (the Image dataclass).
"""

from testbed.image.build import cached_image, ensure_image
from testbed.image.model import Image

__all__ = ["Image", "cached_image", "ensure_image"]
