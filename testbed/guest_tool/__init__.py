"""p2pdma-guest: the testbed's guest-side tool (runs inside the guest, stdlib only).

Shipped into the guest at every boot (``/usr/local/lib/p2pdma-guest``, run as
``/usr/local/bin/p2pdma-guest``); on the host
the same package is ``testbed.guest_tool`` (its pure parts are unit-tested and
:mod:`.schema` is shared with the host-side verdicts).  It imports nothing from the
rest of the testbed and nothing outside the standard library.

Every sub-command prints ONE JSON document on stdout.  The workload sub-commands
exit 0 when they ran (an I/O failure is data, not an exit status), 2 on bad usage
(with {"stage": "usage", "error": ...} on stdout).

    p2pdma-guest inventory [--wait SECONDS] [--expect-nvme N] [--expect-p2pmem N]
        kernel release, CONFIG_PCI_P2PDMA, every PCI device with its upstream
        chain, every NVMe controller (serial -> BDF), every p2pmem provider.

    p2pdma-guest copy --provider BDF --client DEV --size BYTES [--offset BYTES]
                      [--seed N] [--buffer p2pmem|host] [--corrupt-block K]
        The userspace P2PDMA path (Linux >= 6.2): a buffer mmapped from the
        provider's p2pmem/allocate; an O_DIRECT read from DEV into it (the client
        DMA-writes into the provider's CMB) and an O_DIRECT write from it to the
        region after (the client DMA-reads the CMB); every 4 KiB block is
        verified through host memory.

    p2pdma-guest passthru --provider BDF --ctrl CHARDEV --nsid N --size BYTES
                          [--offset-lba L] [--seed N] [--block DEV] [--timeout-ms MS]
        NVMe Write then Read through NVME_IOCTL_IO_CMD with the data buffer in
        p2pmem; verified through host memory and independently by an O_DIRECT
        read of the namespace's block device.

    p2pdma-guest pmr --bdf BDF {write,read} --seed N [--size BYTES] [--unbind]
        The controller's Persistent Memory Region: enable it (PMRCTL.EN), fill
        it with a seeded pattern and flush, or verify that pattern.

    p2pdma-guest iovec --provider BDF --client DEV --case SEGS[/key=BYTES] ... [--corrupt-host]
        pwritev/preadv of iovecs built from p2pmem and host segments (mixed, many,
        sub-page offsets); every byte verified; requests and page-cache use recorded.
    p2pdma-guest limits --client DEV          the queue limits (max_hw_sectors_kb, ...)
    p2pdma-guest fio --provider BDF --client DEV [--buffer host] [--corrupt-offset B] -- ARGS
        fio with --mem=mmapshared:<p2pmem/allocate>; JSON parsed; pool use sampled.
    p2pdma-guest concurrent --pair BDF=DEV ... [--threads N --size B --iters K]
        every pair at once, threads per pair, both directions, own patterns.
    p2pdma-guest pool --provider BDF [--chunk B] [--client DEV]
        exhaust and release the pool, misuse, SIGKILL with I/O in flight.
    p2pdma-guest p2p-loop --provider BDF --client DEV --log FILE [--seconds S]
        P2P copies in flight (hot-unplug), one JSON line per event.

Data pattern: every 4 KiB block starts with a stamp (magic, seed, absolute block
number) followed by bytes from random.Random(seed, block), so misplaced or stale
blocks are caught.  Sizes accept a K/M/G suffix (powers of 1024); MB/s are 10**6
bytes per second.  No threads and small memory: safe to kill from outside.
"""
