"""The guest tool travels with the host code: every boot ships the package
``testbed/guest_tool`` into the guest, in the same SSH command that asks it for the first
inventory.  So the host side and the guest side never disagree about the JSON they
exchange, a change to the tool needs no new image, and a custom kernel or a detached
guest runs the same tool.

It travels as a tar of the package and is unpacked into :data:`GUEST_LIB`, a plain
directory: the guest's Python then keeps each module's compiled bytecode, so only the
first call that uses a module compiles it (under TCG compiling the whole tool cost
about 1.5 s on every call when it ran from a zipapp, where nothing is cached).
:data:`GUEST_TOOL` is the command, a three-line Python script that runs it (``-I -S``:
no site packages, no environment: the tool needs only the standard library, and the
guest's ``site`` costs about 0.2 s of every start under TCG).

Every boot is a fresh overlay, so that bytecode would be compiled again in every boot
(the modules of the first inventory alone took 0.5-1.8 s under TCG).  So the host keeps
the bytecode a guest compiled: a guest that ran the tool compiles the whole package in
the background (checked-hash ``.pyc``: valid only for the very source it was compiled
from, whatever the files' times), the host fetches it at shutdown (:func:`collect_bytecode`:
the first shutdown after a change of the tool waits up to 20 s for it) into
:func:`bytecode_file`, keyed by the tool's source, and later boots ship it in the tar.  A ``.pyc`` is named after the Python that wrote it
(``cli.cpython-313.pyc``): a guest with another Python ignores it and compiles.

    >>> import io, tarfile
    >>> names = tarfile.open(fileobj=io.BytesIO(guest_tool_tar())).getnames()
    >>> "p2pdma_guest/cli.py" in names, "p2pdma-guest" in names
    (True, True)
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import logging
import os
import shlex
import tarfile
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import GuestError
from ..paths import cache_dir

if TYPE_CHECKING:
    from .ssh import GuestSSH

log = logging.getLogger(__name__)

PACKAGE = Path(__file__).resolve().parent.parent / "guest_tool"
GUEST_TOOL = "/usr/local/bin/p2pdma-guest"
GUEST_LIB = "/usr/local/lib/p2pdma-guest"
LAUNCHER = (f"#!/usr/bin/python3 -IS\nimport sys\nsys.path.insert(0, {GUEST_LIB!r})\n"
            "from p2pdma_guest.cli import main\nsys.exit(main())\n")
PYCACHE = "p2pdma_guest/__pycache__/"
# the bytecode a guest compiled in the background, for the host to fetch (a tar)
GUEST_BYTECODE = "/run/p2pdma-guest-bytecode.tar"
BYTECODE_MAX = 8 << 20  # bytes: far more than the tool's bytecode; a bigger answer is wrong
KEEP_VERSIONS = 8  # versions of the tool whose bytecode the host keeps (checkouts, branches)


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    tar.addfile(info, io.BytesIO(data))


def bytecode_tar(bytecode: dict[str, bytes]) -> bytes:
    """Only the ``.pyc`` files, as the host keeps them."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in sorted(bytecode.items()):
            _add(tar, PYCACHE + name, data, 0o644)
    return buf.getvalue()


def guest_tool_tar(package: Path = PACKAGE, bytecode: dict[str, bytes] | None = None) -> bytes:
    """The guest tool as a tar: the package as ``p2pdma_guest/`` and the launcher as
    ``p2pdma-guest`` (mode 755), and ``bytecode`` (name -> .pyc) in the package's
    ``__pycache__``.  Fixed times and owners: the same code, the same bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for f in sorted(package.glob("*.py")):
            _add(tar, f"p2pdma_guest/{f.name}", f.read_bytes(), 0o644)
        _add(tar, "p2pdma-guest", LAUNCHER.encode(), 0o755)
        for name, data in sorted((bytecode or {}).items()):
            _add(tar, PYCACHE + name, data, 0o644)
    return buf.getvalue()


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """What the bytecode cache is keyed by: the tar of the tool's source and launcher."""
    return hashlib.sha256(guest_tool_tar(PACKAGE)).hexdigest()


def bytecode_file() -> Path:
    """Where the host keeps the bytecode guests compiled for this checkout's tool."""
    return cache_dir() / "guest-tool" / f"{source_digest()[:32]}.pyc.tar"


def read_bytecode(data: bytes) -> dict[str, bytes]:
    """The ``.pyc`` files of a tar a guest sent (anything else in it is ignored; a tar that
    cannot be read is empty).

        >>> buf = io.BytesIO()
        >>> with tarfile.open(fileobj=buf, mode="w") as t:
        ...     _add(t, PYCACHE + "cli.cpython-313.pyc", b"x", 0o644)
        ...     _add(t, "etc/passwd", b"y", 0o644)
        >>> read_bytecode(buf.getvalue()), read_bytecode(b"not a tar")
        ({'cli.cpython-313.pyc': b'x'}, {})
    """
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for m in tar.getmembers():
                name = m.name[len(PYCACHE):] if m.name.startswith(PYCACHE) else ""
                if m.isfile() and name.endswith(".pyc") and "/" not in name:
                    f = tar.extractfile(m)
                    if f is not None:
                        out[name] = f.read()
    except (tarfile.TarError, OSError, EOFError):
        return {}
    return out


def has_bytecode() -> bool:
    return bytecode_file().is_file()


@functools.lru_cache(maxsize=1)
def package_tar() -> bytes:
    """The tar of this checkout's guest tool, with the bytecode an earlier guest compiled
    for it when the host has it, gzipped (built once per process).  Gzipped because the
    bytes themselves are what costs: through SSH into a TCG guest 750 KB took 1.7-1.9 s at
    a load of 15 (the guest's dropbear decrypting them in software), its extraction 0.3 s;
    gzip makes them 280 KB, and inflating them in the guest is cheap."""
    try:
        bytecode = read_bytecode(bytecode_file().read_bytes())
    except OSError:
        bytecode = {}
    return gzip.compress(guest_tool_tar(PACKAGE, bytecode), compresslevel=6, mtime=0)


def install_and_run(args: list[str]) -> str:
    """A guest shell command that unpacks the gzipped tar read from stdin (send
    :func:`package_tar` as the command's stdin) into :data:`GUEST_LIB`, installs the
    launcher as :data:`GUEST_TOOL` (:func:`install_command`) and runs the tool with
    ``args``."""
    return f"{install_command()} && exec " + shlex.join([GUEST_TOOL, *args])


def install_command(lib: str = GUEST_LIB, tool: str = GUEST_TOOL) -> str:
    """The shell command that unpacks the tool's gzipped tar (:func:`package_tar`) from
    stdin into ``lib`` and its launcher as ``tool``.

    In a fresh guest (every boot: neither is there yet) one ``tar`` puts each file in its
    place (GNU tar's ``--transform`` to absolute names): under TCG every program started
    costs 50-200 ms, and the general path below starts six.  The launcher lives only at
    ``tool`` (the tar's mode, 755), not in ``lib``.  Otherwise the directory is
    replaced only when the tool differs from the one already there, so the bytecode an
    earlier call compiled stays (a detached guest, a rerun); a changed tool replaces it
    whole, bytecode included."""
    new = f"{lib}.new"
    places = f"s,^p2pdma-guest$,{tool},;s,^p2pdma_guest/,{lib}/p2pdma_guest/,"
    return (f"if [ ! -e {lib} ] && [ ! -e {tool} ]; then "
            f"tar -x -z -m -P --transform {shlex.quote(places)}; else "
            f"rm -rf {new} && mkdir -p {new} && tar -x -z -m -C {new} && "
            f"mv -f {new}/p2pdma-guest {tool} && "
            f"if ! diff -r -q -x __pycache__ {new} {lib} >/dev/null 2>&1; then "
            f"rm -rf {lib} && mv {new} {lib}; else rm -rf {new}; fi; fi")


def compile_in_background() -> str:
    """A guest command that compiles the whole tool (checked-hash bytecode, at the lowest
    priority) into :data:`GUEST_BYTECODE` (or leaves ``GUEST_BYTECODE.failed``) and returns
    at once: what :func:`collect_bytecode` fetches later."""
    tmp = f"{GUEST_BYTECODE}.tmp"
    work = (f"(nice -n 19 /usr/bin/python3 -IS -m compileall -q -f --invalidation-mode "
            f"checked-hash {GUEST_LIB}/p2pdma_guest >/dev/null 2>&1 && "
            f"tar -c -f {tmp} -C {GUEST_LIB} {PYCACHE.rstrip('/')} && mv {tmp} {GUEST_BYTECODE})"
            f" || : > {GUEST_BYTECODE}.failed")
    return f"nohup sh -c {shlex.quote(work)} </dev/null >/dev/null 2>&1 &"


def collect_bytecode(ssh: "GuestSSH", wait: float = 20.0) -> bool:
    """Fetch the bytecode :func:`compile_in_background` makes in the guest into
    :func:`bytecode_file` for later boots, waiting up to ``wait`` seconds for the guest to
    finish it: once per version of the tool on a host, every later boot saves compiling
    it.  True when the cache has it now.  Never raises: the cache only saves time."""
    if has_bytecode():
        return True
    polls = max(1, int(wait / 0.2))
    command = (f"i=0; while [ ! -e {GUEST_BYTECODE} ] && [ ! -e {GUEST_BYTECODE}.failed ] && "
               f"[ $i -lt {polls} ]; do sleep 0.2; i=$((i + 1)); done; "
               f"cat {GUEST_BYTECODE} 2>/dev/null")
    try:
        status, data, timed_out = ssh.output(command, wait + 5.0, limit=BYTECODE_MAX)
    except GuestError as exc:
        log.debug("guest tool bytecode not fetched: %s", exc)
        return False
    bytecode = read_bytecode(data) if status == 0 and not timed_out else {}
    if not bytecode:
        return False
    dest = bytecode_file()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(bytecode_tar(bytecode))
        os.replace(tmp, dest)
        _prune(dest.parent)
    except OSError as exc:
        log.debug("guest tool bytecode not cached: %s", exc)
        return False
    return True


def _prune(directory: Path, keep: int = KEEP_VERSIONS) -> None:
    """Keep the bytecode of the ``keep`` versions of the tool cached last."""
    cached = sorted(directory.glob("*.pyc.tar"), key=lambda f: f.stat().st_mtime, reverse=True)
    for old in cached[keep:]:
        old.unlink(missing_ok=True)
