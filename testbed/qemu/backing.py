"""The files behind a machine's NVMe namespaces and PMRs, made ready just before QEMU
starts (the rule is :mod:`testbed.spec.files`'s):

- per-run files (no ``file:`` in the topology) are created sparse in the run directory,
  which is private to the run; a restart of the same guest finds them there;
- a file the topology names is checked again (it may have changed since validation);
  when it is missing and the topology says ``create: true`` it is created sparse with
  ``O_EXCL`` (never over another file); an existing one is used as it is, never grown,
  truncated or written by the testbed itself.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UsageError
from ..spec.files import check_backing_file
from ..spec.model import Topology
from .cmdline import BackingFile, backing_files


def _create_sparse(path: Path, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def create_backing_files(topo: Topology, run_dir: Path) -> list[BackingFile]:
    """Make every backing file ready (see the module doc); UsageError for a user file that
    no longer passes the rule."""
    files = backing_files(topo, run_dir)
    for bf in files:
        if not bf.user_file:
            if not bf.path.exists():
                _create_sparse(bf.path, bf.size)
            continue
        why = check_backing_file(bf.path, bf.size, bf.create, bf.role)
        if why is not None:
            raise UsageError(f"{topo.filename}: {bf.owner}'s {bf.role} file {bf.path}: {why}")
        if not bf.path.exists():
            try:
                _create_sparse(bf.path, bf.size)
            except FileExistsError:  # appeared since the check: check it once more
                why = check_backing_file(bf.path, bf.size, False, bf.role)
                if why is not None:
                    raise UsageError(f"{topo.filename}: {bf.owner}'s {bf.role} file "
                                     f"{bf.path}: {why}") from None
    return files
