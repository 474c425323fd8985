"""Attach to a detached guest (``testbed boot --detach``) instead of booting one.

The attached guest offers the same commands as a booted one (both implement
:class:`~testbed.guest.protocol.GuestLike`) but cannot be restarted, has no QMP
here (its supervisor holds it: no :class:`~testbed.guest.protocol.Qmp`), and leaving it
does not shut it down.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import GuestError
from ..qemu.accel import Accel
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
