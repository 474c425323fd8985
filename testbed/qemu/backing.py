"""The files behind a machine's NVMe namespaces and PMRs: created, or checked.

Per-run files (no ``file:`` in the topology) are created sparse in the run
directory.  A file the topology names belongs to the user: see
:func:`check_user_file` for what the testbed will and will not do with it.
"""

from __future__ import annotations

from pathlib import Path

from ..spec.model import Topology
from .cmdline import BackingFile, backing_files


def create_backing_files(topo: Topology, run_dir: Path) -> list[BackingFile]:
    """Create the missing backing files sparse; grow a too-small PMR file."""
    files = backing_files(topo, run_dir)
    for bf in files:
        if not bf.path.exists() or (bf.role == "pmr" and bf.path.stat().st_size < bf.size):
            with open(bf.path, "ab") as f:
                f.truncate(max(bf.size, f.tell()))
    return files
