"""Detached guests: one state directory per named instance.

``testbed boot --detach`` starts a supervisor process (:mod:`testbed.guest.supervisor`)
that owns the QEMU process (which dies with it) and records its state here;
``testbed ssh/ps/stop`` and ``testbed run --guest`` read it.  A stale instance — the
supervisor or QEMU died — is reported and cleaned by ``ps`` and ``stop``.

Nothing outside the testbed's own state is ever touched on the strength of an
``instance.json``: names are plain words checked before any path is built, a
recorded process is signalled only while it is still the process that was
recorded (start time and command line), and only run directories the testbed
made (see :func:`testbed.util.rundir.owned_run_dir`) are deleted.

    >>> check_name("switch-cmb")
    'switch-cmb'
    >>> check_name("../..")
    Traceback (most recent call last):
    ...
    testbed.errors.InstanceNameError: instance name '../..': use 1 to 64 letters, digits, '.', '-' and '_', starting with a letter or digit
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import InstanceError, InstanceNameError, UsageError, did_you_mean
from ..paths import state_dir
from ..util.files import atomic_write
from ..util.process import ProcessIdentity, is_same, signal_if_same
from ..util.rundir import remove_owned_run_dir

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
STATE_FILE = "instance.json"


def instances_dir() -> Path:
    return state_dir() / "instances"


def check_name(name: str) -> str:
    """``name`` if it is a plain instance name; InstanceNameError (exit 2) otherwise."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InstanceNameError(str(name), "use 1 to 64 letters, digits, '.', '-' and '_', "
                                "starting with a letter or digit")
    base = instances_dir().resolve()
    if (base / name).resolve().parent != base:  # belt and braces: never outside the dir
        raise InstanceNameError(name, "resolves outside the instances directory")
    return name


@dataclass
class Instance:
    name: str
    topology: str = ""
    status: str = "booting"  # booting | ready | failed | broken (unreadable state)
    supervisor: ProcessIdentity | None = None
    qemu: ProcessIdentity | None = None
    port: int = 0
    ssh: list[str] = field(default_factory=list)
    key: str = ""
    host_public_key: str = ""
    run_dir: str = ""
    boot_seconds: float = 0.0
    error: str = ""
    started: float = field(default_factory=time.time)
    gdb_port: int = 0  # QEMU's gdbstub (testbed boot --detach --gdb); 0: none
    vmlinux: str = ""  # the running kernel's vmlinux with symbols, when one was found
    kernel_release: str = ""
    default_kernel: bool = True  # the image's own kernel (for the gdb symbols hint)
    kernel_spec: str = ""  # the --kernel it booted ("" for the image's): what runs map onto
    shares: list[str] = field(default_factory=list)  # --share values, canonical
    monitor: str = ""  # a second QMP monitor's socket, for later commands ("": none)

    @property
    def directory(self) -> Path:
        return instances_dir() / check_name(self.name)

    @property
    def monitor_lock(self) -> Path:
        """Held by the one command connected to :attr:`monitor` (QEMU serves one client)."""
        return self.directory / "monitor.lock"

    @property
    def supervisor_pid(self) -> int:
        return self.supervisor.pid if self.supervisor else 0

    @property
    def qemu_pid(self) -> int:
        return self.qemu.pid if self.qemu else 0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["supervisor"] = self.supervisor.to_json() if self.supervisor else None
        d["qemu"] = self.qemu.to_json() if self.qemu else None
        return d

    def save(self) -> None:
        atomic_write(self.directory / STATE_FILE, json.dumps(self.to_json(), indent=1) + "\n")

    def alive(self) -> bool:
        return is_same(self.supervisor) and (self.status != "ready" or is_same(self.qemu))


def _from_json(name: str, data: Any) -> Instance:
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    known = {f.name for f in fields(Instance)}
    kw = {k: v for k, v in data.items() if k in known and k not in ("supervisor", "qemu")}
    inst = Instance(**kw)
    if inst.name != name:
        raise ValueError(f"it names instance {inst.name!r}")
    inst.supervisor = ProcessIdentity.from_json(data.get("supervisor"))
    inst.qemu = ProcessIdentity.from_json(data.get("qemu"))
    for attr, kind in (("port", int), ("boot_seconds", (int, float)), ("started", (int, float)),
                       ("run_dir", str), ("key", str), ("status", str), ("error", str),
                       ("gdb_port", int), ("vmlinux", str), ("kernel_release", str),
                       ("default_kernel", bool), ("kernel_spec", str), ("monitor", str)):
        if not isinstance(getattr(inst, attr), kind):
            raise ValueError(f"{attr} has the wrong type")
    for attr in ("ssh", "shares"):
        value = getattr(inst, attr)
        if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
            raise ValueError(f"{attr} has the wrong type")
    return inst


def load(name: str) -> Instance | None:
    """The instance ``name``; None when it does not exist; an Instance with status
    ``broken`` (and the reason in ``error``) when its state file is unusable."""
    check_name(name)
    d = instances_dir() / name
    if not d.is_dir() or d.is_symlink():
        return None
    try:
        return _from_json(name, json.loads((d / STATE_FILE).read_text()))
    except FileNotFoundError:
        return Instance(name=name, status="broken", error=f"no {STATE_FILE}")
    except (OSError, ValueError, TypeError) as exc:
        return Instance(name=name, status="broken", error=f"unreadable {STATE_FILE}: {exc}")


def create(name: str) -> Instance:
    """Reserve ``name`` atomically (mkdir); UsageError if a live instance has it."""
    check_name(name)
    instances_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
    d = instances_dir() / name
    try:
        d.mkdir(mode=0o700)
    except FileExistsError:
        old = load(name)
        if old is not None and old.alive():
            raise UsageError(f"an instance named {name!r} is already running "
                             f"(testbed stop {name})") from None
        remove(name)
        d.mkdir(mode=0o700)
    inst = Instance(name=name)
    inst.save()
    return inst


def free_name(base: str) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]", "-", base)[:58].lstrip(".-_") or "guest"
    for i in range(0, 1000):
        name = base if i == 0 else f"{base}-{i}"
        inst = load(name)
        if inst is None or not inst.alive():
            return name
    raise UsageError("too many instances")


def list_instances() -> list[Instance]:
    d = instances_dir()
    if not d.is_dir():
        return []
    out = []
    for p in sorted(d.iterdir()):
        if not NAME_RE.fullmatch(p.name):
            continue  # not the testbed's: left alone
        inst = load(p.name)
        if inst is not None:
            out.append(inst)
    return out


def remove(name: str) -> None:
    d = instances_dir() / check_name(name)
    if d.is_symlink():
        d.unlink()
    else:
        shutil.rmtree(d, ignore_errors=True)


def get_ready(name: str) -> Instance:
    """A running, ready instance (UsageError when there is none by that name)."""
    inst = load(name)
    if inst is None:
        names = [i.name for i in list_instances()]
        raise UsageError(f"no instance named {name!r}{did_you_mean(name, names)} "
                         f"(running: {', '.join(names) or 'none'})")
    if inst.status == "broken":
        raise InstanceError(f"instance {name!r} is broken: {inst.error} (testbed stop {name} "
                            "removes it)")
    if not inst.alive():
        how = stop(inst)
        raise InstanceError(f"instance {name!r} is stale: its QEMU or supervisor died ({how})"
                            + (f": {inst.error}" if inst.error else ""))
    if inst.status != "ready":
        raise InstanceError(f"instance {name!r} is {inst.status}")
    return inst


def stop(inst: Instance, timeout: float = 30.0) -> str:
    """Stop an instance's supervisor (which shuts the guest down); clean its state."""
    how = "stopped"
    if signal_if_same(inst.supervisor, signal.SIGTERM):
        deadline = time.monotonic() + timeout
        while is_same(inst.supervisor) and time.monotonic() < deadline:
            time.sleep(0.1)
        if signal_if_same(inst.supervisor, signal.SIGKILL):
            how = "killed (did not stop in time)"
    elif inst.status == "broken":
        how = f"was broken ({inst.error}); removed its state"
    else:
        how = "was stale (its supervisor had died); cleaned"
    signal_if_same(inst.qemu, signal.SIGKILL)  # QEMU dies with its supervisor; make sure
    if inst.run_dir:
        remove_owned_run_dir(inst.run_dir)
    if inst.monitor:  # normally removed with QEMU by the supervisor; not after a SIGKILL
        _remove_monitor(Path(inst.monitor))
    remove(inst.name)
    return how


def _remove_monitor(sock: Path) -> None:
    """The second monitor's socket, and the private short directory it may have needed
    (:meth:`testbed.qemu.machine.QmpSocket.in_dir`)."""
    if sock.is_socket():
        sock.unlink(missing_ok=True)
    if sock.parent.name.startswith("tb-qmp-") and sock.parent != instances_dir():
        shutil.rmtree(sock.parent, ignore_errors=True)
