"""Everything that talks to or knows about the QEMU binary: the device table
(:mod:`.devices`), the second validation pass (:mod:`.validate`), the one command-line
builder (:mod:`.cmdline`), the QEMU process (:mod:`.machine`), the binary's
capabilities (:mod:`.probe`), the accelerator (:mod:`.accel`) and the live check
(:mod:`.verify`)."""
