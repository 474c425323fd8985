"""Attach to a detached guest (``testbed boot --detach``) instead of booting one.

The attached guest offers the same command interface as a booted
:class:`~testbed.guest.boot.Guest` but cannot be restarted, and leaving it does
not shut it down.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from ..errors import GuestError
from .boot import GUEST_TOOL, Guest
from .console import Console
from .ssh import GuestSSH
from .treecheck import map_names


class AttachedGuest(Guest):
    def __init__(self, inst, topology):
        self.topology = topology
        self.image = SimpleNamespace(host_public_key=inst.host_public_key,
                                     client_key=Path(inst.key))
        self.kernel = None
        self.run_dir = SimpleNamespace(path=Path(inst.run_dir), keep=True,
                                       __truediv__=lambda self, n: Path(inst.run_dir) / n)
        self.qemu = None
        self.lease = None
        self.accel = SimpleNamespace(name="?", reason=f"attached to instance {inst.name}")
        self.argv = []
        self.ssh = GuestSSH("127.0.0.1", inst.port, Path(inst.key), inst.host_public_key)
        self.console = Console(Path(inst.run_dir) / "console.log")
        self.boot_seconds = inst.boot_seconds
        self._dmesg_mark = 0
        res = self.run([GUEST_TOOL, "inventory"], timeout=60)
        try:
            self.inventory = json.loads(res.stdout)
        except ValueError:
            raise GuestError(f"instance {inst.name}: inventory failed: {res.describe()}") from None
        self.names = map_names(topology, self.inventory)[0]
        self.restart = None  # a detached guest belongs to its supervisor

    def shutdown(self, graceful: bool = True):
        self.ssh.close()  # the instance keeps running

    def kill(self) -> None:
        self.ssh.close()
