"""Detached guests: one state directory per named instance.

``testbed boot --detach`` starts a supervisor process (:mod:`testbed.supervisor`)
that owns the QEMU process (which dies with it) and records its state here;
``testbed ssh/ps/stop`` read it.  A stale instance — the supervisor or QEMU
died — is reported and cleaned by ``ps`` and ``stop``.

    >>> [i.name for i in list_instances()]        # doctest: +SKIP
    ['switch-cmb']
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import UsageError
from .paths import state_dir

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def instances_dir() -> Path:
    return state_dir() / "instances"


@dataclass
class Instance:
    name: str
    topology: str = ""
    status: str = "booting"  # booting | ready | failed
    supervisor_pid: int = 0
    qemu_pid: int = 0
    port: int = 0
    ssh: list[str] = field(default_factory=list)
    key: str = ""
    host_public_key: str = ""
    run_dir: str = ""
    boot_seconds: float = 0.0
    error: str = ""
    started: float = field(default_factory=time.time)

    @property
    def directory(self) -> Path:
        return instances_dir() / self.name

    def save(self) -> None:
        tmp = self.directory / f".instance.json.{os.getpid()}"
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(self.directory / "instance.json")

    def alive(self) -> bool:
        return _pid_alive(self.supervisor_pid) and (
            self.status != "ready" or _pid_alive(self.qemu_pid))


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise UsageError(f"instance name {name!r}: use letters, digits, '.', '-' and '_'")
    return name


def create(name: str) -> Instance:
    """Reserve ``name`` atomically (mkdir); UsageError if it is taken by a live instance."""
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
    for i in range(0, 1000):
        name = base if i == 0 else f"{base}-{i}"
        inst = load(name)
        if not (instances_dir() / name).exists() or (inst is not None and not inst.alive()):
            return name
    raise UsageError("too many instances")


def load(name: str) -> Instance | None:
    try:
        data = json.loads((instances_dir() / name / "instance.json").read_text())
        return Instance(**data)
    except (OSError, ValueError, TypeError):
        return None


def list_instances() -> list[Instance]:
    d = instances_dir()
    if not d.is_dir():
        return []
    out = []
    for p in sorted(d.iterdir()):
        inst = load(p.name)
        if inst is None:
            inst = Instance(name=p.name, status="broken")
        out.append(inst)
    return out


def remove(name: str) -> None:
    shutil.rmtree(instances_dir() / name, ignore_errors=True)


def stop(inst: Instance, timeout: float = 30.0) -> str:
    """Stop an instance's supervisor (which shuts the guest down); clean its state."""
    how = "stopped"
    if _pid_alive(inst.supervisor_pid):
        os.kill(inst.supervisor_pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _pid_alive(inst.supervisor_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _pid_alive(inst.supervisor_pid):
            os.kill(inst.supervisor_pid, signal.SIGKILL)
            how = "killed (did not stop in time)"
    else:
        how = "was stale (its supervisor had died); cleaned"
    for pid in (inst.qemu_pid,):  # QEMU dies with its supervisor; make sure
        if _pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if inst.run_dir:
        shutil.rmtree(inst.run_dir, ignore_errors=True)
    remove(inst.name)
    return how
