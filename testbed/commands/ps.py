"""List detached guests; stale ones (QEMU or supervisor died) are reported and cleaned.
PORT is the SSH port on 127.0.0.1, GDB the gdbstub's (``testbed boot --detach --gdb``).

Nothing but the testbed's own state is touched: a recorded process is signalled only
while it is still the process that was recorded, and only run directories the
testbed made are removed.
"""

from __future__ import annotations

import argparse
import time

from ..guest import instances
from ..util.table import format_table

HELP = "list detached guests"


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    rows = []
    for inst in instances.list_instances():
        if inst.status == "broken":
            state = f"broken: {inst.error} (testbed stop {inst.name} removes it)"
        elif inst.status == "booting" and inst.alive():
            state = "booting"
        elif inst.alive() and inst.status == "ready":
            state = "running"
        else:
            how = instances.stop(inst)
            state = f"stale: {how}" + (f" ({inst.error.splitlines()[0]})" if inst.error else "")
        age = time.time() - inst.started
        rows.append((inst.name, state, str(inst.port or "-"), str(inst.gdb_port or "-"),
                     f"{age:.0f}s", inst.topology))
    if not rows:
        print("no detached guests")
        return 0
    print(format_table([("NAME", "STATE", "PORT", "GDB", "AGE", "TOPOLOGY"), *rows]))
    return 0
