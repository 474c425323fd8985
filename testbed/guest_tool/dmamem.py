"""Memory a device may DMA to, and where a mapping sits in this process.

VFIO and iommufd map *process virtual addresses* into an IO address space, and Python's
``mmap`` does not tell its address.  Instead of ctypes, the address is read from
``/proc/self/maps``: the lines before and after the ``mmap`` call are compared and the
new one of the asked length and file is the mapping.  ``/proc/self/smaps`` then gives the
VMA's flags (``VmFlags: ... pf io``: VM_PFNMAP and VM_IO, what an mmap of a BAR is).

DMA memory is a memfd mapped MAP_SHARED (shmem pages: VFIO and iommufd pin them; a memfd
never merges with a neighbouring anonymous mapping, so its line is its own).

    >>> parse_maps("7f0000000000-7f0000200000 rw-s 00000000 00:01 7 /memfd:tb (deleted)\\n")
    [(139637976727552, 139637978824704, 0, '/memfd:tb (deleted)')]
"""

import mmap
import os

PAGE = mmap.PAGESIZE


class AddressError(Exception):
    """The new mapping could not be found in /proc/self/maps."""


def parse_maps(text):
    """[(start, end, file offset, path)] of a maps file's lines."""
    out = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5:
            continue
        start, end = (int(x, 16) for x in parts[0].split("-"))
        out.append((start, end, int(parts[2], 16), parts[5].strip() if len(parts) > 5 else ""))
    return out


def _maps():
    with open("/proc/self/maps") as f:
        return parse_maps(f.read())


def mmap_at(fd, length, offset=0, path_has="", prot=mmap.PROT_READ | mmap.PROT_WRITE):
    """(mmap object, its virtual address) of a MAP_SHARED mapping of ``fd``; the mapping's
    line must name a path containing ``path_has``."""
    before = set(_maps())
    mm = mmap.mmap(fd, length, mmap.MAP_SHARED, prot, offset=offset)
    try:
        new = [m for m in _maps() if m not in before and m[1] - m[0] == length
               and m[2] == offset and path_has in m[3]]
        if len(new) != 1:
            raise AddressError(f"{len(new)} new mappings of {length} bytes at offset "
                               f"{offset:#x} naming {path_has!r} in /proc/self/maps")
    except BaseException:
        mm.close()
        raise
    return mm, new[0][0]


def vma_flags(vaddr):
    """The VmFlags of the VMA holding ``vaddr`` (e.g. ['rd', 'wr', 'sh', 'io', 'pf']),
    None when not found."""
    inside = False
    try:
        with open("/proc/self/smaps") as f:
            for line in f:
                head = line.split(None, 1)[0]
                if "-" in head and ":" not in head:
                    start, end = (int(x, 16) for x in head.split("-"))
                    inside = start <= vaddr < end
                elif inside and line.startswith("VmFlags:"):
                    return line.split()[1:]
    except OSError:
        return None
    return None


class DmaArena:
    """``size`` bytes of shared memory (a memfd) with a bump allocator of page-aligned
    chunks; ``iova`` is where the caller maps it in the device's address space."""

    def __init__(self, size, iova, name="p2ptb-dma"):
        self.size = (size + PAGE - 1) // PAGE * PAGE
        self.iova = iova
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, self.size)
            self.mm, self.vaddr = mmap_at(self.fd, self.size, 0, f"/memfd:{name}")
        except BaseException:
            os.close(self.fd)
            raise
        self.view = memoryview(self.mm)
        self.next = 0
        self.chunks = []

    def alloc(self, size):
        """A zeroed, page-aligned :class:`Chunk` of ``size`` bytes."""
        size = (size + PAGE - 1) // PAGE * PAGE
        if self.next + size > self.size:
            raise MemoryError(f"DMA arena of {self.size} bytes exhausted ({size} more asked)")
        off, self.next = self.next, self.next + size
        self.view[off:off + size] = bytes(size)
        chunk = Chunk(self, off, size)
        self.chunks.append(chunk)
        return chunk

    def close(self):
        for c in self.chunks:  # every view of the mmap goes before the mmap
            c.view.release()
        self.view.release()
        self.mm.close()
        os.close(self.fd)


class Chunk:
    """Part of an arena: ``view`` for the CPU, ``iova`` for the device."""

    def __init__(self, arena, offset, size):
        self.arena, self.offset, self.size = arena, offset, size
        self.iova = arena.iova + offset
        self.view = arena.view[offset:offset + size]
