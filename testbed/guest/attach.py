"""Attach to a detached guest (``testbed boot --detach``) instead of booting one.

The attached guest offers the same commands as a booted one (both implement
:class:`~testbed.guest.protocol.GuestLike`) but cannot be restarted, and leaving it
does not shut it down.  Its QEMU (started by the instance's supervisor) serves a second
QMP monitor in the instance's directory: :func:`attach` then gives a
:class:`QmpAttachedGuest`, which is also a :class:`~testbed.guest.protocol.Qmp` (connected
on first use, holding the monitor's lock until the guest is left), so hot-unplug and every
other QMP workload run on it unchanged.  An instance without that monitor (started by an
older testbed) gives a plain :class:`AttachedGuest`: no QMP here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from ..errors import GuestError

from ..qemu.accel import Accel
from ..qemu.monitor import Monitor, QmpEvent, attach_monitor
from ..spec.model import Topology
from .console import Console
from .guest import SshGuest
from .instances import Instance
from .ssh import GuestSSH
from .tool import GUEST_TOOL
from .protocol import Seen
from .treecheck import map_names


class AttachedGuest(SshGuest):
    def __init__(self, inst: Instance, topology: Topology):
        ssh = GuestSSH("127.0.0.1", inst.port, Path(inst.key), inst.host_public_key)
        res = ssh.run([GUEST_TOOL, "inventory"], timeout=60)
        try:
            inventory = json.loads(res.stdout)
        except ValueError:
            ssh.close()
            raise GuestError(f"instance {inst.name}: inventory failed: {res.describe()}") from None
        super().__init__(topology, ssh, Console(Path(inst.run_dir) / "console.log"),
                         Path(inst.run_dir), Seen(inventory, map_names(topology, inventory)[0]),
                         accel=Accel("?", f"attached to instance {inst.name}"),
                         boot_seconds=inst.boot_seconds)
        self.instance_name = inst.name


class QmpAttachedGuest(AttachedGuest):
    """An attached guest whose QEMU serves a second QMP monitor (``Instance.monitor``)."""

    def __init__(self, inst: Instance, topology: Topology):
        super().__init__(inst, topology)
        self._monitor_path = Path(inst.monitor)
        self._monitor_lock = inst.monitor_lock
        self._monitor: Monitor | None = None

    def _connected(self) -> Monitor:
        if self._monitor is None:  # events count from here: connect before the command
            self._monitor = attach_monitor(self._monitor_path, self._monitor_lock,
                                           f"instance {self.instance_name}")
        return self._monitor

    # -- QMP (testbed.guest.protocol.Qmp) --------------------------------------------------
    def qmp(self, command: str, **args: Any) -> Any:
        return self._connected().qmp(command, **args)

    def event_wait(self, name: str, timeout: float = 60.0,
                   match: Callable[[QmpEvent], bool] | None = None) -> QmpEvent | None:
        return self._connected().event_wait(name, timeout, match)

    def clear_events(self) -> None:
        self._connected().clear_events()

    def shutdown(self, graceful: bool = True) -> int | None:
        """Leave the guest running: disconnect SSH and the monitor (freeing it)."""
        if self._monitor is not None:
            self._monitor.close()
            self._monitor = None
        return super().shutdown(graceful)


def attach(inst: Instance, topology: Topology) -> AttachedGuest:
    """The detached guest ``inst`` as ``topology``: with QMP when its QEMU offers a monitor."""
    if inst.monitor:
        return QmpAttachedGuest(inst, topology)
    return AttachedGuest(inst, topology)
