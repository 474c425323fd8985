"""Everything that talks to the QEMU binary: probing, command lines, processes, QMP."""
