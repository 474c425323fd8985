"""Guest kernels: reading kernel files (:mod:`.format`), their configuration
(:mod:`.config`), modules and initramfs images (:mod:`.kmod`, :mod:`.cpio`,
:mod:`.initramfs`), resolving ``--kernel SPEC`` (:mod:`.resolve`), preparing one for a
boot (:mod:`.prepare`) and building one from source (:mod:`.build`)."""
