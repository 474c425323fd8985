"""List detached guests; stale ones (QEMU or supervisor died) are reported and cleaned."""

from __future__ import annotations

import time

from .. import instances

HELP = "list detached guests"


def add_arguments(p) -> None:
    pass


def run(args) -> int:
    rows = []
    for inst in instances.list_instances():
        if inst.status == "booting" and inst.alive():
            state = "booting"
        elif inst.alive() and inst.status == "ready":
            state = "running"
        else:
            how = instances.stop(inst)
            state = f"stale: {how}" + (f" ({inst.error.splitlines()[0]})" if inst.error else "")
        age = time.time() - inst.started
        rows.append((inst.name, state, str(inst.port or "-"), f"{age:.0f}s", inst.topology))
    if not rows:
        print("no detached guests")
        return 0
    head = ("NAME", "STATE", "PORT", "AGE", "TOPOLOGY")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(5)]
    for r in [head, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0
