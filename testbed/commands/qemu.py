"""QEMU installations: the host's, and newer ones in private roots.

    testbed qemu install trixie-backports [--name NAME] [--update]
    testbed qemu list [--json] [--no-probe]
    testbed qemu remove NAME

``install`` builds a private Debian root holding QEMU (qemu-system-x86 and
qemu-system-arm, their firmware) from SOURCE (trixie-backports: QEMU 11.1; trixie;
sid) with mmdebstrap, from the host's own Debian mirror; its QEMU runs on this host
through the root's own dynamic loader.  Nothing is installed on the host.  An
installed name is reused as it is (--update asks the archive again; the same package
versions reuse the same root).  About 25 s on a quiet machine, 260 MB.

A QEMU is then chosen by ``machine.qemu`` in a topology or ``--qemu`` on boot, run and
matrix (``--testbed-qemu`` for pytest): ``host`` (the host's qemu-system-x86_64), an
installation's name (``trixie-backports``) or QEMU version (``11.1``), or a path (a
QEMU program, or a private root directory).

``list`` shows each QEMU with its version, where it lives, and what its probe found:
devices, CPU models, accelerators, and the properties the testbed cares about.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from ..errors import QemuError
from ..image.qemu_root import SOURCES, install
from ..qemu.binary import Qemu, host
from ..qemu.installed import Installation, installations, remove
from ..qemu.probe import Capabilities, probe
from ..util.table import format_table

log = logging.getLogger(__name__)

HELP = "install, list and remove QEMUs (a newer QEMU in a private root)"

# properties `list` reports, by device: what the testbed's features depend on
NOTABLE = (("amd-iommu", "dma-remap"), ("pcie-root-port", "disable-acs"),
           ("arm-smmuv3", "primary-bus"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True,
                           parser_class=type(p))
    i = sub.add_parser("install", help="install a QEMU from a Debian suite into a private root")
    i.add_argument("source", choices=tuple(SOURCES), metavar="SOURCE",
                   help=f"the Debian suite: {', '.join(SOURCES)}")
    i.add_argument("--name", help="the installation's name (default: SOURCE)")
    i.add_argument("--update", action="store_true",
                   help="ask the archive again even when NAME is installed")
    ls = sub.add_parser("list", help="the host's QEMU and the installed ones, with their probes")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.add_argument("--no-probe", action="store_true",
                    help="do not run the QEMUs (version and path from the install only)")
    r = sub.add_parser("remove", help="remove an installed QEMU (its root too, if unused)")
    r.add_argument("name", metavar="NAME")


def run(args: argparse.Namespace) -> int:
    if args.action == "install":
        inst = install(args.source, args.name, update=args.update)
        m = inst.manifest
        log.info("%s: QEMU %s from %s, %d MB, installed in %.0f s", inst.name, inst.version,
                 m.get("source"), int(m.get("bytes", 0)) >> 20, float(m.get("seconds", 0)))
        print(inst.qemu().binary)
        return 0
    if args.action == "remove":
        inst = remove(args.name)
        log.info("removed %s%s", inst.name, f" (root {inst.key})" if inst.key else "")
        return 0
    rows = [_entry(q, inst, probe_it=not args.no_probe) for q, inst in _all()]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    table = [["NAME", "VERSION", "SOURCE", "SIZE", "PATH"]]
    for e in rows:
        size = f"{e['bytes'] >> 20} MB" if e.get("bytes") else ""
        table.append([e["name"], e.get("version") or "?", e.get("source", ""), size,
                      e.get("root") or e.get("binary", "")])
    print(format_table(table))
    for e in rows:
        if e.get("error"):
            print(f"{e['name']}: BROKEN: {e['error']}")
        elif "devices" in e:
            props = ", ".join(f"{d} {p}" for d, p in e["notable"]) or "none"
            print(f"{e['name']}: {e['devices']} devices, {e['cpu_models']} CPU models, "
                  f"accelerators {', '.join(e['accelerators']) or '?'}; {props}")
    return 0


def _all() -> list[tuple[Qemu | None, Installation | None]]:
    out: list[tuple[Qemu | None, Installation | None]] = []
    try:
        out.append((host(), None))
    except QemuError:
        pass  # no QEMU on this host: only the installed ones
    out += [(None, inst) for inst in installations()]
    return out


def _entry(q: Qemu | None, inst: Installation | None, probe_it: bool) -> dict[str, Any]:
    e: dict[str, Any] = {}
    if inst is not None:
        m = inst.manifest
        e.update(name=inst.name, version=inst.version, source=m.get("source"),
                 root=str(inst.root), bytes=m.get("bytes"), packages=m.get("packages", {}),
                 installed_at=m.get("installed_at"), install_seconds=m.get("seconds"))
        try:
            q = inst.qemu()
        except QemuError as exc:
            e["error"] = str(exc)
            return e
    assert q is not None
    e.setdefault("name", q.name)
    e["binary"] = q.binary
    if not probe_it:
        return e
    try:
        caps = probe(q)
    except QemuError as exc:
        e["error"] = str(exc)
        return e
    e.update(_capabilities(caps))
    return e


def _capabilities(caps: Capabilities) -> dict[str, Any]:
    notable = [(d, p) for d, p in NOTABLE if p in caps.device_props.get(d, frozenset())]
    return {"version": caps.version_str, "version_text": caps.version_text,
            "devices": len(caps.devices), "cpu_models": len(caps.cpu_models),
            "accelerators": sorted(caps.accels), "notable": notable,
            "device_props": {d: sorted(p) for d, p in sorted(caps.device_props.items())}}
