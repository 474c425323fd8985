"""A small userspace NVMe driver over VFIO: BAR0 mmapped, an admin queue pair, Identify,
one I/O queue pair, Read and Write with PRPs (a PRP list beyond two pages), completions
polled, every wait bounded.

It drives any DMA space with ``map(vaddr, iova, size)`` (a type1 container or an iommufd
IOAS): its queues and buffers live in a :class:`~.dmamem.DmaArena` mapped at the arena's
IOVA; a transfer names IOVAs, so it can point the controller at another device's BAR
mapped into the same space (P2P).  Register layout and commands: NVM Express Base
Specification 1.4 (CAP 00h, CC 14h, CSTS 1Ch, AQA 24h, ASQ 28h, ACQ 30h, doorbells from
1000h; 64-byte submission and 16-byte completion entries).

    >>> prps(0x10000000, 3 * 4096, lambda n: 0x20000000)
    (268435456, 536870912, [268439552, 268443648])
    >>> prps(0x10000200, 4096, lambda n: 0)
    (268435968, 268439552, [])
"""

import struct
import time

PAGE = 4096
REG_CAP, REG_VS, REG_INTMS, REG_CC, REG_CSTS = 0x00, 0x08, 0x0C, 0x14, 0x1C
REG_AQA, REG_ASQ, REG_ACQ = 0x24, 0x28, 0x30
DOORBELLS = 0x1000
OP_DELETE_SQ, OP_CREATE_SQ, OP_DELETE_CQ, OP_CREATE_CQ = 0x00, 0x01, 0x04, 0x05
OP_IDENTIFY, OP_SET_FEATURES = 0x06, 0x09
OP_WRITE, OP_READ = 0x01, 0x02
FEAT_NUM_QUEUES = 0x07
SQE = struct.Struct("<BBHIIIQQQIIIIII")  # 64 bytes
CQE = struct.Struct("<IIHHHH")  # 16 bytes: dw0, dw1, sq head, sq id, cid, status
CQE_STATUS = struct.Struct("<H")  # the phase bit is bit 0 of the status word
CQE_STATUS_OFFSET = 14
ADMIN_DEPTH, IO_DEPTH = 32, 64
STATUS_NAMES = {(0, 0x04): "Data Transfer Error", (0, 0x06): "Internal Error",
                (0, 0x02): "Invalid Field in Command", (0, 0x80): "LBA Out of Range",
                (0, 0x07): "Command Abort Requested", (0, 0x0B): "Invalid Namespace"}


class NvmeError(Exception):
    """A command completed with an error status."""

    def __init__(self, what, status):
        self.sct, self.sc, self.dnr = status >> 8 & 7, status & 0xFF, bool(status >> 14 & 1)
        name = STATUS_NAMES.get((self.sct, self.sc), "status")
        super().__init__(f"{what}: {name} (SCT {self.sct:#x} SC {self.sc:#x})")

    def to_json(self):
        return {"sct": self.sct, "sc": self.sc, "dnr": self.dnr, "error": str(self)}


class NvmeTimeout(Exception):
    """No completion within the bound (the command may still be outstanding)."""


def _settled(view, off, tries=1000):
    """The completion entry at ``off`` once two reads in a row agree (its writer may still
    be storing it when its phase bit shows)."""
    entry = CQE.unpack_from(view, off)
    for _ in range(tries):
        again = CQE.unpack_from(view, off)
        if again == entry:
            break
        entry = again
    return entry


def prps(iova, length, list_page):
    """(PRP1, PRP2, [list entries]) for ``length`` bytes at ``iova``; ``list_page(n)`` gives
    the IOVA of a PRP list page when more than two pages are touched (then PRP2 is it)."""
    first_len = PAGE - iova % PAGE
    pages = [iova]
    addr = iova + first_len
    while addr < iova + length:
        pages.append(addr)
        addr += PAGE
    if len(pages) == 1:
        return iova, 0, []
    if len(pages) == 2:
        return iova, pages[1], []
    return iova, list_page(len(pages) - 1), pages[1:]


def decode_cap(cap):
    return {"mqes": (cap & 0xFFFF) + 1, "cqr": bool(cap >> 16 & 1), "to_ms": (cap >> 24 & 0xFF)
            * 500, "dstrd": cap >> 32 & 0xF, "css_nvm": bool(cap >> 37 & 1),
            "mpsmin": 1 << (12 + (cap >> 48 & 0xF)), "mpsmax": 1 << (12 + (cap >> 52 & 0xF)),
            "pmrs": bool(cap >> 56 & 1), "cmbs": bool(cap >> 57 & 1)}


def _text(raw):
    return raw.decode("ascii", "replace").rstrip(" \0")


def parse_identify_controller(data):
    vid, ssvid = struct.unpack_from("<HH", data, 0)
    (ver,) = struct.unpack_from("<I", data, 80)
    (nn,) = struct.unpack_from("<I", data, 516)
    return {"vid": f"{vid:04x}", "ssvid": f"{ssvid:04x}", "serial": _text(data[4:24]),
            "model": _text(data[24:64]), "firmware": _text(data[64:72]), "mdts": data[77],
            "cntlid": struct.unpack_from("<H", data, 78)[0],
            "version": f"{ver >> 16}.{ver >> 8 & 0xFF}.{ver & 0xFF}", "nn": nn,
            "sqes": data[512], "cqes": data[513]}


def parse_identify_namespace(data):
    nsze, ncap, nuse = struct.unpack_from("<QQQ", data, 0)
    flbas = data[26] & 0xF
    (lbaf,) = struct.unpack_from("<I", data, 128 + 4 * flbas)
    return {"nsze": nsze, "ncap": ncap, "nuse": nuse, "nlbaf": data[25] + 1, "flbas": flbas,
            "lba_size": 1 << (lbaf >> 16 & 0xFF), "metadata": lbaf & 0xFFFF}


class Registers:
    """BAR0 as 32-bit words: mmapped through VFIO (the doorbells included)."""

    def __init__(self, dev, length=2 * PAGE):
        self.mm, self.vaddr = dev.map_region(0, length)
        self.dev = dev
        self.words = memoryview(self.mm).cast("I")

    def __getitem__(self, off):
        return self.words[off // 4]

    def __setitem__(self, off, value):
        self.words[off // 4] = value & 0xFFFFFFFF

    def read64(self, off):
        return self[off] | self[off + 4] << 32

    def write64(self, off, value):
        self[off] = value & 0xFFFFFFFF
        self[off + 4] = value >> 32

    def close(self):
        self.words.release()
        self.dev.unmap_region(self.mm)


class Queue:
    """A submission queue and its completion queue (same depth), polled."""

    def __init__(self, qid, depth, sq, cq, sq_db, cq_db):
        self.qid, self.depth, self.sq, self.cq = qid, depth, sq, cq
        self.sq_db, self.cq_db = sq_db, cq_db
        self.tail = self.head = 0
        self.phase = 1
        self.cid = 0


class Controller:
    """One NVMe controller behind VFIO, driven from this process."""

    def __init__(self, dev, space, arena, admin_timeout=5.0, io_timeout=10.0):
        self.dev, self.space, self.arena = dev, space, arena
        self.admin_timeout, self.io_timeout = admin_timeout, io_timeout
        self.regs = Registers(dev)
        self.cap = decode_cap(self.regs.read64(REG_CAP))
        self.enabled = False
        self.admin: Queue = self._queue(0, min(ADMIN_DEPTH, self.cap["mqes"]))
        self.io: Queue | None = None
        self.ident: dict = {}
        self.ns: dict = {}
        self.prp_page = arena.alloc(PAGE)
        self.scratch = arena.alloc(PAGE)
        self.commands = 0

    # -- controller state -------------------------------------------------------------------
    def _wait_ready(self, want, seconds):
        deadline = time.monotonic() + seconds
        while True:
            csts = self.regs[REG_CSTS]
            if csts == 0xFFFFFFFF:
                raise NvmeTimeout("CSTS reads all ones: the controller is gone")
            if csts & 2:
                raise NvmeTimeout("CSTS.CFS: controller fatal status")
            if (csts & 1) == want:
                return
            if time.monotonic() > deadline:
                raise NvmeTimeout(f"CSTS.RDY did not become {want} within {seconds:.1f} s")
            time.sleep(0.002)

    def _timeout(self):
        return min(30.0, max(1.0, self.cap["to_ms"] / 1000))

    def disable(self):
        """CC.EN = 0 and wait for CSTS.RDY = 0: the controller stops all DMA."""
        cc = self.regs[REG_CC]
        if cc & 1:
            self.regs[REG_CC] = cc & ~1
        self._wait_ready(0, self._timeout())
        self.enabled = False

    def enable(self):
        """Reset, admin queue pair, enable (4 KiB pages, NVM command set, 64/16-byte
        entries); then Identify, the queue count and one I/O queue pair."""
        if not self.cap["css_nvm"] or self.cap["mpsmin"] > PAGE:
            raise NvmeTimeout(f"unsupported controller: CAP {self.cap}")
        self.dev.command(set_bits=0x6)  # memory decoding and bus mastering
        self.disable()
        self.regs[REG_INTMS] = 0xFFFFFFFF  # polled: no interrupts
        for q in (self.admin, self.io):  # a re-enable starts the queues afresh
            if q is not None:
                q.sq.view[:] = bytes(q.sq.size)
                q.cq.view[:] = bytes(q.cq.size)
                q.tail = q.head = 0
                q.phase = 1
        depth = self.admin.depth
        self.regs[REG_AQA] = (depth - 1) << 16 | (depth - 1)
        self.regs.write64(REG_ASQ, self.admin.sq.iova)
        self.regs.write64(REG_ACQ, self.admin.cq.iova)
        self.regs[REG_CC] = 1 | 6 << 16 | 4 << 20
        self._wait_ready(1, self._timeout())
        self.enabled = True
        self.ident = parse_identify_controller(self.identify(1, 0))
        self.ns = parse_identify_namespace(self.identify(0, 1))
        self.admin_cmd(OP_SET_FEATURES, cdw10=FEAT_NUM_QUEUES, cdw11=0)
        depth = min(IO_DEPTH, self.cap["mqes"])
        io = self.io = self.io or self._queue(1, depth)
        self.admin_cmd(OP_CREATE_CQ, prp1=io.cq.iova, cdw10=(depth - 1) << 16 | 1, cdw11=1)
        self.admin_cmd(OP_CREATE_SQ, prp1=io.sq.iova, cdw10=(depth - 1) << 16 | 1,
                       cdw11=1 << 16 | 1)

    def _queue(self, qid, depth):
        stride = 4 << self.cap["dstrd"]
        return Queue(qid, depth, self.arena.alloc(depth * SQE.size),
                     self.arena.alloc(depth * CQE.size), DOORBELLS + 2 * qid * stride,
                     DOORBELLS + (2 * qid + 1) * stride)

    def close(self):
        """Stop the controller (bounded), release BAR0; never raises."""
        try:
            if self.enabled:
                self.disable()
        except Exception:  # noqa: BLE001 - closing must not mask the first error
            pass
        self.regs.close()

    # -- commands -----------------------------------------------------------------------------
    def _submit(self, q, opcode, nsid=0, prp1=0, prp2=0, cdw10=0, cdw11=0, cdw12=0,
                cdw13=0, cdw14=0, cdw15=0):
        q.cid = (q.cid + 1) & 0xFFFF
        SQE.pack_into(q.sq.view, q.tail * SQE.size, opcode, 0, q.cid, nsid, 0, 0, 0, prp1, prp2,
                      cdw10, cdw11, cdw12, cdw13, cdw14, cdw15)
        q.tail = (q.tail + 1) % q.depth
        self.regs[q.sq_db] = q.tail
        self.commands += 1
        return q.cid

    def _complete(self, q, cid, what, seconds):
        deadline = time.monotonic() + seconds
        pause = 0.0
        off = q.head * CQE.size
        while True:
            # the status word first: struct reads the fields one after the other, and the
            # controller (QEMU, another host thread) may write the entry between them, so a
            # whole-entry read could pair the new phase with the old command id
            if CQE_STATUS.unpack_from(q.cq.view, off + CQE_STATUS_OFFSET)[0] & 1 == q.phase:
                dw0, _, _, _, got, status = _settled(q.cq.view, off)
                q.head = (q.head + 1) % q.depth
                if q.head == 0:
                    q.phase ^= 1
                self.regs[q.cq_db] = q.head
                if got != cid:
                    raise NvmeTimeout(f"{what}: completion for command {got}, expected {cid}")
                if status >> 1 & 0x7FFF:
                    raise NvmeError(what, status >> 1)
                return dw0
            if time.monotonic() > deadline:
                raise NvmeTimeout(f"{what}: no completion within {seconds:.1f} s")
            time.sleep(pause)
            pause = min(0.002, pause + 0.0001)

    def admin_cmd(self, opcode, **fields):
        cid = self._submit(self.admin, opcode, **fields)
        return self._complete(self.admin, cid, f"admin opcode {opcode:#x}", self.admin_timeout)

    def identify(self, cns, nsid):
        self.admin_cmd(OP_IDENTIFY, nsid=nsid, prp1=self.scratch.iova, cdw10=cns)
        return bytes(self.scratch.view[:PAGE])

    # -- I/O --------------------------------------------------------------------------------
    @property
    def lba_size(self):
        return self.ns["lba_size"]

    @property
    def max_transfer(self):
        mdts = self.ident["mdts"]
        limit = (1 << mdts) * self.cap["mpsmin"] if mdts else 1 << 20
        return min(limit, 512 * PAGE)  # one PRP list page

    def rw(self, opcode, lba, iova, length, timeout=None):
        """Read (device -> ``iova``) or Write (``iova`` -> device) of ``length`` bytes at
        ``lba`` of namespace 1, in commands of at most the controller's transfer size."""
        if length % self.lba_size or iova % 4:
            raise ValueError(f"length {length} is not a multiple of the LBA size "
                             f"{self.lba_size}, or the IOVA is not dword aligned")
        what = "Read" if opcode == OP_READ else "Write"
        done = 0
        while done < length:
            n = min(self.max_transfer, length - done)
            prp1, prp2, entries = prps(iova + done, n, lambda _: self.prp_page.iova)
            if entries:
                struct.pack_into(f"<{len(entries)}Q", self.prp_page.view, 0, *entries)
            slba = lba + done // self.lba_size
            if self.io is None:
                raise NvmeTimeout("the I/O queue pair was never created (enable() first)")
            cid = self._submit(self.io, opcode, nsid=1, prp1=prp1, prp2=prp2,
                               cdw10=slba & 0xFFFFFFFF, cdw11=slba >> 32,
                               cdw12=n // self.lba_size - 1)
            self._complete(self.io, cid, f"{what} of {n} bytes at LBA {slba}",
                           timeout or self.io_timeout)
            done += n
        return done

    def read(self, lba, iova, length, timeout=None):
        return self.rw(OP_READ, lba, iova, length, timeout)

    def write(self, lba, iova, length, timeout=None):
        return self.rw(OP_WRITE, lba, iova, length, timeout)
