"""The guest image: a Debian trixie root filesystem with the trixie-backports
kernel (CONFIG_PCI_P2PDMA=y), its own tiny initramfs and a lean boot path
(busybox init, static network, sshd; no systemd, no udev).

    from testbed.image.build import ensure_image
    image = ensure_image()

Modules: recipe (the recipe file and the cache key), mirror (the host's Debian
mirror), build (mmdebstrap, mke2fs, qcow2, the cache and its lock), keys (ed25519
key pairs), model (the Image dataclass).  Kernel files, modules and initramfs images
are :mod:`testbed.kernel`'s.
"""
