"""p2pdma-testbed: PCIe peer-to-peer DMA testbeds on QEMU.

The data flows one way through the package:

    topology (spec/) -> command line (qemu/cmdline.py) -> QEMU process (qemu/machine.py)
    -> guest (guest/) -> workload (workloads/) -> result (results/)
"""

__version__ = "0.1.0"
