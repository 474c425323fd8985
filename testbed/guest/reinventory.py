"""Ask a running guest for its inventory again (after a hot-plug) and refresh what the
host knows of it: the inventory, the spec-name -> BDF map; returns the tree differences.

    >>> diffs = reinventory(guest, wait=30)        # doctest: +SKIP
    >>> diffs                                      # doctest: +SKIP
    []
"""

from __future__ import annotations

import json

from .protocol import GuestLike, Seen
from .tool import GUEST_TOOL
from .treecheck import check_tree, inventory_argv, map_names


def reinventory(guest: GuestLike, wait: float = 30.0) -> list[str]:
    """Wait up to ``wait`` seconds for every NVMe and p2pmem provider of the topology, then
    update ``guest.inventory`` and ``guest.names``; the differences from the topology."""
    topo = guest.topology
    res = guest.run([GUEST_TOOL, *inventory_argv(topo, wait)], timeout=wait + 30)
    try:
        inv = json.loads(res.stdout)
    except ValueError:
        return [f"the guest inventory failed: {res.describe()[:300]}"]
    guest.update(Seen(inv, map_names(topo, inv)[0]))
    diffs = check_tree(topo, inv)
    if not inv.get("ready"):
        diffs.append(f"not every NVMe and p2pmem provider was live within {wait:.0f} s")
    return diffs
