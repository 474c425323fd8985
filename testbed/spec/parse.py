"""Turn a :class:`Sourced` YAML tree into a :class:`Topology`, collecting every problem.

The checks here need nothing but the file itself.  What the QEMU machine makes of
the tree (root-bus slots, devices and properties the binary has) is a second pass,
:func:`testbed.qemu.validate`, which points at lines through ``Topology.where``.

    >>> from .yamlsource import load
    >>> text = '''
    ... name: demo
    ... pcie:
    ...   - root_port: rp0
    ...     device: {nvme: nvme0, cmb: 64M}
    ... '''
    >>> topo = parse(load(text, "demo.yaml"), "demo.yaml")
    >>> topo.nvmes()[0].cmb // (1 << 20)
    64
"""


from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..errors import SpecError, did_you_mean
from .model import (
    ACCELS,
    ARCHS,
    IOMMU_MODES,
    MAP_TYPES,
    VERDICTS,
    DownstreamPort,
    Expectation,
    HostBridge,
    Iommu,
    Machine,
    MachineProfile,
    RootPort,
    Switch,
    Topology,
)
from .units import MiB, format_size
from .yamlsource import Sourced, positions
from .fields import (  # the limits and key lists: also imported from here
    describe,
    FieldReader,
    EXPECT_KEYS,
    IOMMU_KEYS,
    KINDS,
    KIND_KEYS,
    MACHINE_KEYS,
    MAX_BUSES,
    MAX_CMDLINE,
    MAX_CPUS,
    MAX_MEMORY,
    SWITCH_MAX_PORTS,
    TOPOLOGY_NAME_RE,
    TOP_KEYS,
)
from .endpoints import BY_WORD, ENDPOINTS

ENDPOINT_WORDS = tuple(BY_WORD)  # nvme, igb, ...
ALL_KINDS = KINDS + ENDPOINT_WORDS
ALL_KIND_KEYS = {**KIND_KEYS, **{w: k.keys for w, k in BY_WORD.items()}}


class _Parser(FieldReader):
    """The document and its tree; single fields in FieldReader, each endpoint's own fields
    in its kind (spec/endpoints)."""

    def __init__(self, filename: str, base_dir: Path):
        super().__init__(filename, base_dir)
        self.kind_keys = dict(ALL_KIND_KEYS)

    # -- the document -----------------------------------------------------------------------
    def topology(self, root: Sourced) -> Topology | None:
        top = self.mapping(root, "", TOP_KEYS, "a topology")
        if top is None:
            return None
        name = self.string(top["name"], "name") if "name" in top else Path(self.filename).stem
        if name is not None and not TOPOLOGY_NAME_RE.fullmatch(name):
            self.problem(top.get("name"), "name", f"topology name {name!r} must start with a "
                         "letter or digit and use only letters, digits, '.', '-' and '_' (it "
                         "names run directories); at most 64 characters"
                         + ("" if "name" in top else ": rename the file or add a name: key"))
            name = None
        description = self.string(top["description"], "description") if "description" in top else ""
        machine = self.machine(top.get("machine"))
        profile = (machine or Machine()).profile  # a bad machine: check the rest for x86_64
        iommu = self.iommu(top.get("iommu"), profile)
        cmdline = self.cmdline(top.get("kernel_cmdline"))
        if "pcie" not in top:
            self.problem(root, "pcie", "missing: list the devices on the root complex "
                         f"(root_port entries, or {' or '.join(ENDPOINT_WORDS)} endpoints)")
            pcie: tuple = ()
        else:
            pcie = self.root_complex(top["pcie"], iommu)
        if self.bus_count > MAX_BUSES:
            self.problem(top.get("pcie"), "pcie", f"needs {self.bus_count} PCI buses; "
                         f"at most {MAX_BUSES} exist")
        expect = self.expectations(top.get("expect"))
        limit = profile.max_cpus_without_irq_remap
        viommu = profile.viommu(iommu.model) if iommu else None
        if machine and viommu is not None and limit is not None and machine.cpus > limit \
                and not viommu.remaps_x2apic:
            remap = " or ".join(v.model for v in profile.viommus if v.remaps_x2apic) or "no"
            self.problem(top.get("machine"), "machine.cpus", f"more than {limit} vCPUs need "
                         f"x2APIC interrupt remapping, which only the {remap} vIOMMU provides "
                         "here")
        if name is None or machine is None or iommu is None or cmdline is None:
            return None
        return Topology(name=name, description=description or "", machine=machine, iommu=iommu,
                        kernel_cmdline=cmdline, pcie=pcie, expect=expect,
                        source=self.base_dir / Path(self.filename).name)

    def machine(self, node: Sourced | None) -> Machine | None:
        if node is None:
            return Machine()
        m = self.mapping(node, "machine", MACHINE_KEYS, "machine settings")
        if m is None:
            return None
        kw: dict[str, Any] = {}
        kw["arch"] = self.choice(m["arch"], "machine.arch", ARCHS) if "arch" in m \
            else Machine().arch
        profile = Machine(arch=kw["arch"] or Machine().arch).profile
        kind = profile.machine_type
        if "type" in m and self.string(m["type"], "machine.type") not in (None, kind):
            self.problem(m["type"], "machine.type", f"only {kind!r} is supported (got "
                         f"{m['type'].value!r}): {profile.machine_type_why}")
        kw["cpu"] = self.string(m["cpu"], "machine.cpu") if "cpu" in m else profile.default_cpu
        if "memory" in m:
            mem = self.size(m["memory"], "machine.memory")
            if mem is not None and mem < 256 * MiB:
                self.problem(m["memory"], "machine.memory", f"{format_size(mem)} is too little "
                             "for the guest: use at least 256M")
            elif mem is not None and mem > MAX_MEMORY:
                self.problem(m["memory"], "machine.memory", f"{format_size(mem)} is more than "
                             f"the {format_size(MAX_MEMORY)} a testbed guest may have")
            kw["memory"] = mem
        if "cpus" in m:
            kw["cpus"] = self.integer(m["cpus"], "machine.cpus", 1, MAX_CPUS)
        if "accel" in m:
            kw["accel"] = self.choice(m["accel"], "machine.accel", ACCELS)
        kw["qemu"] = self.string(m["qemu"], "machine.qemu") if "qemu" in m \
            else profile.qemu_binary
        if "hotplug" in m:
            kw["hotplug"] = self.choice(m["hotplug"], "machine.hotplug", profile.hotplug_modes)
        if None in kw.values():
            return None
        return Machine(**kw)

    def iommu(self, node: Sourced | None, profile: MachineProfile) -> Iommu | None:
        if node is None:
            return Iommu()
        models = profile.viommu_models
        if not isinstance(node.value, dict):
            model = self.choice(node, "iommu", models)
            return Iommu(model=model) if model else None
        m = self.mapping(node, "iommu", IOMMU_KEYS, "vIOMMU settings") or {}
        model = self.choice(m["model"], "iommu.model", models) if "model" in m else None
        if "model" not in m:
            self.problem(node, "iommu.model", f"missing: one of {', '.join(models)}")
        mode = self.choice(m["mode"], "iommu.mode", IOMMU_MODES) if "mode" in m else "strict"
        if model == "none" and "mode" in m:
            self.problem(m["mode"], "iommu.mode", "a mode needs a vIOMMU model other than none")
        if model is None or mode is None:
            return None
        return Iommu(model=model, mode=mode)

    def cmdline(self, node: Sourced | None) -> tuple[str, ...] | None:
        if node is None or node.value is None:
            return ()
        if isinstance(node.value, str):
            texts = [(node, "kernel_cmdline", node.value)]
        elif isinstance(node.value, list):
            texts = []
            for i, w in enumerate(node.value):
                s = self.string(w, f"kernel_cmdline[{i}]")
                if s is None:
                    return None
                texts.append((w, f"kernel_cmdline[{i}]", s))
        else:
            self.problem(node, "kernel_cmdline", f"expected a string or a list of strings, got "
                         f"{describe(node.value)}")
            return None
        ok = True
        for at, path, text in texts:
            bad = next((c for c in text if ord(c) < 32 and c not in " \t\n" or ord(c) == 127
                        or not c.isascii()), None)
            if bad is not None:
                self.problem(at, path, f"character U+{ord(bad):04X} in the kernel command line: "
                             "use printable ASCII words")
                ok = False
        words = tuple(w for _, _, text in texts for w in text.split())
        if ok and len(" ".join(words)) > MAX_CMDLINE:
            self.problem(node, "kernel_cmdline", f"{len(' '.join(words))} characters: the "
                         f"kernel's command line takes 2048 and the testbed needs room for its "
                         f"own words (at most {MAX_CMDLINE} here)")
            ok = False
        return words if ok else None

    # -- the PCIe tree ----------------------------------------------------------------------
    def root_complex(self, node: Sourced, iommu: Iommu | None) -> tuple:
        if not isinstance(node.value, list):
            self.problem(node, "pcie", f"expected a list of devices, got {describe(node.value)}")
            return ()
        out = []
        for i, item in enumerate(node.value):
            dev = self.node(item, f"pcie[{i}]",
                            allowed=("root_port", *ENDPOINT_WORDS, "host_bridge"),
                            where="on the root complex")
            if dev is not None:
                out.append(dev)
        return tuple(out)

    def node(self, item: Sourced, path: str, allowed: tuple[str, ...], where: str):
        if not isinstance(item.value, dict):
            self.problem(item, path, f"expected a device (a mapping with one of "
                         f"{', '.join(allowed)}), got {describe(item.value)}")
            return None
        kinds = [k for k in ALL_KINDS if k in item.value]
        if len(kinds) != 1:
            if kinds:
                port = next((k for k in kinds if k in ("root_port", "downstream_port")), None)
                dev = next((k for k in kinds if k in ("switch", *ENDPOINT_WORDS)), None)
                fix = (f"to plug the {dev} into the {port.replace('_', ' ')}, indent it under "
                       "the port's 'device:' key" if port and dev else
                       "give each device its own list entry ('- ')")
                self.problem(item, path, f"one entry can be only one device: it has "
                             f"{' and '.join(kinds)} ({fix})")
            else:
                hint = ""
                for key in item.value:
                    hint = hint or did_you_mean(key, ALL_KINDS)
                self.problem(item, path, f"no device kind: give one of {', '.join(allowed)}{hint}")
            return None
        kind = kinds[0]
        if kind not in allowed:
            self.problem(item, f"{path}.{kind}", _placement_error(kind, where), at_key=kind)
            return None
        allowed_keys = ALL_KIND_KEYS[kind]
        if "acs" in item.value and "acs" not in allowed_keys:
            why = BY_WORD[kind].no_acs if kind in BY_WORD else _NO_ACS[kind]
            self.problem(item, f"{path}.acs", why, at_key="acs")
            allowed_keys += ("acs",)  # reported above, not as an unknown key
        m = self.mapping(item, path, allowed_keys,
                         f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}") or {}
        name = self.name(m[kind], f"{path}.{kind}", kind.replace("_", " "))
        if name is not None:
            self.node_paths[name] = path
        if kind in BY_WORD:
            return BY_WORD[kind].read(self, item, m, path, name)
        return getattr(self, kind)(item, m, path, name)

    def port_device(self, m: dict[str, Sourced], path: str, port: str):
        if "device" not in m or m["device"].value is None:
            return None
        dev = m["device"]
        if isinstance(dev.value, list):
            if len(dev.value) > 1:
                self.problem(dev, f"{path}.device", f"a PCIe port holds one device, this list has "
                             f"{len(dev.value)} (plug in a switch to attach more)")
                return None
            if not dev.value:
                return None
            dev = dev.value[0]
        return self.node(dev, f"{path}.device", allowed=("switch", *ENDPOINT_WORDS),
                         where=f"in {port}")

    def host_bridge(self, item, m, path, name):
        bus_nr = self.integer(m["bus_nr"], f"{path}.bus_nr", 1, 254) if "bus_nr" in m else None
        self.bus_count += 1  # its root bus
        rp = m.get("root_ports")
        if rp is None or not isinstance(rp.value, list) or not rp.value:
            self.problem(rp or item, f"{path}.root_ports", "a host bridge needs a list of root "
                         "ports (root_port entries), as the root complex has",
                         at_key=None if rp else "host_bridge")
            return None
        if len(rp.value) > SWITCH_MAX_PORTS:
            self.problem(rp, f"{path}.root_ports", f"too many root ports: {len(rp.value)}, a "
                         f"host bridge's root bus has {SWITCH_MAX_PORTS} slots")
        ports = [self.node(entry, f"{path}.root_ports[{i}]", allowed=("root_port",),
                           where="in a host bridge") for i, entry in enumerate(rp.value)]
        if not name or None in ports or ("bus_nr" in m and bus_nr is None):
            return None
        return HostBridge(name, tuple(p for p in ports if p is not None), bus_nr)

    def root_port(self, item, m, path, name):
        self.bus_count += 1
        device = self.port_device(m, path, "a root port")
        acs = self.boolean(m["acs"], f"{path}.acs") if "acs" in m else True
        return RootPort(name, device, acs=acs) if name and acs is not None else None

    def downstream_port(self, item, m, path, name):
        self.bus_count += 1
        device = self.port_device(m, path, "a downstream port")
        return DownstreamPort(name, device) if name else None

    def switch(self, item, m, path, name):
        self.bus_count += 1  # the bus below the upstream port
        ports = []
        ds = m.get("downstream")
        if ds is None or not isinstance(ds.value, list) or not ds.value:
            self.problem(ds or item, f"{path}.downstream", "a switch needs a list of downstream "
                         "ports (each a downstream_port entry, or a device that gets a port of "
                         "its own)", at_key=None if ds else "switch")
            return None
        if len(ds.value) > SWITCH_MAX_PORTS:
            self.problem(ds, f"{path}.downstream", f"too many downstream ports: {len(ds.value)}, "
                         f"a switch's internal bus has {SWITCH_MAX_PORTS} slots")
        for i, entry in enumerate(ds.value):
            sub = f"{path}.downstream[{i}]"
            if not isinstance(entry.value, dict) or "downstream_port" in entry.value:
                port = self.node(entry, sub, allowed=("downstream_port", "switch", *ENDPOINT_WORDS)
                                 if not isinstance(entry.value, dict) else ("downstream_port",),
                                 where="")
            else:
                dev = self.node(entry, sub, allowed=("switch", *ENDPOINT_WORDS),
                                where="in a downstream port")
                self.bus_count += 1
                port = DownstreamPort(f"{name}-dp{i}", dev) if name and dev else None
                if port and port.name in self.names:
                    self.problem(entry, sub, f"the implied port name {port.name!r} is taken "
                                 f"(rename the other {port.name!r}, or write this port as a "
                                 "downstream_port entry with a name of its own)")
                    port = None
                elif port:
                    self.names[port.name] = entry.line
                    self.node_paths[port.name] = sub
            if port is not None:
                ports.append(port)
        return Switch(name, tuple(ports)) if name else None

    def expectations(self, node: Sourced | None) -> tuple[Expectation, ...]:
        if node is None or node.value is None:
            return ()
        if not isinstance(node.value, list):
            self.problem(node, "expect", f"expected a list of {{provider, client, verdict}}, got "
                         f"{describe(node.value)}")
            return ()
        out = []
        for i, e in enumerate(node.value):
            sub = f"expect[{i}]"
            m = self.mapping(e, sub, EXPECT_KEYS, "an expectation")
            if m is None:
                continue
            missing = [k for k in ("provider", "client", "verdict") if k not in m]
            for k in missing:
                self.problem(e, f"{sub}.{k}", "missing")
            if missing:
                continue
            provider = self.string(m["provider"], f"{sub}.provider")
            client = self.string(m["client"], f"{sub}.client")
            verdict = self.choice(m["verdict"], f"{sub}.verdict", VERDICTS)
            reason = self.string(m["reason"], f"{sub}.reason") if "reason" in m else None
            map_type = self.choice(m["map_type"], f"{sub}.map_type", MAP_TYPES) \
                if "map_type" in m else None
            if "map_type" in m and map_type is None:
                continue
            for key, val in (("provider", provider), ("client", client)):
                if val is not None and val not in self.names:
                    self.problem(m[key], f"{sub}.{key}", f"no device named {val!r}"
                                 + did_you_mean(val, self.names))
                    val = None
            if provider is not None and client is not None and verdict is not None \
                    and provider in self.names and client in self.names:
                exp = Expectation(provider, client, verdict, reason or "stated in the topology file",
                                  map_type)
                self.expect_nodes.append((exp, m, sub))
                out.append(exp)
        return tuple(out)

    def check_expectations(self, topo: Topology) -> None:
        # the kinds a pair is made of (NVMe: a CMB provider and an NVMe client)
        names = {e.name for e in topo.endpoints()
                 if ENDPOINTS[type(e)].pair_client or ENDPOINTS[type(e)].p2p_bar is not None}
        for exp, m, sub in self.expect_nodes:
            for key in ("provider", "client"):
                if getattr(exp, key) not in names:
                    self.problem(m[key], f"{sub}.{key}", f"{getattr(exp, key)!r} is not an nvme "
                                 "device: expectations name a p2pmem provider and an NVMe client")


_SWITCH_NO_ACS = ("only a root port can switch ACS off: QEMU's x3130 switch ports have no ACS "
                  "capability at all (none to turn off, and no option to add one)")
_NO_ACS = {
    "switch": _SWITCH_NO_ACS,
    "downstream_port": _SWITCH_NO_ACS,
    "host_bridge": "only a root port can switch ACS off: write acs under one of the host "
                   "bridge's root_ports",
}


def _placement_error(kind: str, where: str) -> str:
    return {
        "root_port": "a root port plugs only into the root complex (the top-level pcie list) "
                     "or a host bridge's root_ports list",
        "host_bridge": "a host bridge exists only on the root complex (the top-level pcie "
                       "list)",
        "switch": "a switch's upstream port plugs into a root port or a downstream port, "
                  "not into the root complex",
        "downstream_port": "a downstream port exists only inside a switch's downstream list",
    }.get(kind, f"an {kind} cannot be placed {where}")



def parse(root: Sourced, filename: str, base_dir: Path | None = None) -> Topology:
    """Validate and build; raise :class:`SpecError` listing every problem.

    The result records where every field was written (``Topology.where``) so the
    checks against QEMU (:func:`testbed.qemu.validate`) can name lines too.
    """
    parser = _Parser(filename, base_dir or Path(filename).resolve().parent)
    topo = parser.topology(root)
    if topo is not None:
        parser.check_expectations(topo)
    if parser.problems:
        raise SpecError(parser.problems)
    assert topo is not None
    values, keys = positions(root)
    return dataclasses.replace(topo, where=values, key_where=keys,
                               node_paths=dict(parser.node_paths), filename=filename)
