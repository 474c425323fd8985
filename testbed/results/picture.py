"""A drawing of the topology and its P2P paths, as Graphviz DOT text (pure: no ``dot``
is run here; :mod:`testbed.results.graphviz` turns the text into SVG).

The tree: the machine's root complex (host bridge, CPU model) with the vIOMMU beside it, any
expander host bridges, root ports, switches and their downstream ports, NVMe controllers
with their CMB and PMR sizes.  Over it, one path per judged (provider, client) pair
(both directions in one path, arrows at both ends, when they went alike), coloured by
verdict and numbered; a table under the tree gives each number's pair, verdict,
mechanism and way (see :mod:`testbed.results.routes` for the ways a path goes).  A
dashed path ending in a bar was refused at the root complex; a path ending in a bar at
the vIOMMU faulted there.  A path drawn bold did not go as predicted (its table row says
what was).  More than :data:`SEPARATE` paths are bundled hop by hop.

    >>> from testbed.spec import load_topology
    >>> from testbed.verdicts.record import Record
    >>> dot = topology_dot(load_topology("switch-cmb"), [
    ...     Record("p2p-copy", "nvme0", "nvme1", "ok", observed="ok",
    ...            predicted_map_type="bus-address", observed_map_type="bus-address")])
    >>> '"nvme0" [' in dot and '"sw0" -> "sw0-dp1"' in dot and "bus-address" in dot
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape
from typing import Iterable, Sequence

from ..qemu.devices import bus_numbers, kind_of
from ..qemu.probe import CpuInfo
from ..spec.endpoints import ENDPOINTS, Endpoint
from ..spec.model import DownstreamPort, HostBridge, Node, RootPort, Switch, Topology
from ..verdicts.cmdline import KernelView, kernel_view
from ..verdicts.predict import pairs, predict
from ..verdicts.record import Record
from .routes import ROOT_COMPLEX, VIOMMU, Route, route

# line colours per verdict (the matrix page's cell colours, darker, for thin lines)
COLOURS = {"ok": "#15803d", "rejected": "#d97706", "iommu-fault": "#7c3aed",
           "unsupported": "#6b7280", "error": "#dc2626", "revoked": "#0891b2"}
OTHER = "#0e7490"  # verdicts a newer workload may add
SEVERITY = ("ok", "revoked", "unsupported", "rejected", "iommu-fault", "error")  # worst last
STOPS = ("refused", "fault", "revoked")  # routes that end in a bar
FONT = "DejaVu Sans"
SEPARATE = 8  # more paths than this are bundled hop by hop


def quote(text: str) -> str:
    """A DOT string: ``"`` and ``\\`` escaped, newlines as centred line breaks.

    >>> print(quote('a "b"\\nc\\\\'))
    "a \\"b\\"\\nc\\\\"
    """
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _attrs(**attrs: object) -> str:
    return "[" + ", ".join(f"{k}={v if isinstance(v, (int, float)) else quote(str(v))}"
                           for k, v in attrs.items()) + "]"


@dataclass
class PairPath:
    """The records of one pair (or of both directions of a pair), drawn as one path."""

    provider: str
    client: str
    records: list[Record] = field(default_factory=list)
    both_ways: bool = False
    family: str = ""  # "" for the kernel's P2PDMA paths; a vfio-p2p method's record name

    @property
    def verdicts(self) -> list[str]:
        seen = [r.observed or r.predicted or "?" for r in self.records]
        return list(dict.fromkeys(seen))

    @property
    def verdict(self) -> str:
        """The worst verdict among the records (it colours the path)."""
        rank = {v: i for i, v in enumerate(SEVERITY)}
        return max(self.verdicts, key=lambda v: rank.get(v, 1.5))

    @property
    def map_type(self) -> str | None:
        types = [r.observed_map_type or r.predicted_map_type for r in self.records]
        return next((t for t in types if t), None)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.records)

    @property
    def predicted_only(self) -> bool:
        return all(r.observed is None for r in self.records)

    @property
    def key(self) -> tuple:
        return (self.verdicts, self.map_type, self.passed, self.predicted_only,
                sorted({r.name for r in self.records}))

    def translating(self, view: KernelView) -> bool:
        """Through the IOMMU's page tables: what the kernel showed (IOMMU mappings of the
        provider's BAR), else what its command line says."""
        for r in self.records:
            maps = r.mechanism.get("iommu_p2p_maps")
            if isinstance(maps, int):
                return maps > 0
        return view.translating

    @property
    def pair(self) -> str:
        return f"{self.provider}{'⇄' if self.both_ways else '→'}{self.client}" + (
            f" ({self.family})" if self.family else "")

    @property
    def outcome(self) -> str:
        """``ok · bus-address``; what was predicted instead when it did not go so."""
        text = "/".join(self.verdicts) + (f" · {self.map_type}" if self.map_type else "")
        if self.predicted_only:
            return f"{text} (predicted)"
        wrong = [r for r in self.records if not r.passed]
        if wrong:
            text += f" ✗ predicted {wrong[0].predicted}" + (
                f" · {wrong[0].predicted_map_type}" if wrong[0].predicted_map_type else "")
        return text


def pair_paths(records: Iterable[Record], topo: Topology) -> list[PairPath]:
    """Records with a provider and a client in ``topo`` and a verdict (predicted, or judged),
    one path per pair; a pair's two directions share a path when they went alike.  The
    vfio-p2p methods (records named ``vfio-*``) take other ways than the kernel's P2PDMA
    mapping: each gets paths of its own."""
    names = {n.name for n in topo.endpoints()}
    by_pair: dict[tuple[str, str, str], PairPath] = {}
    for r in records:
        if r.provider in names and r.client in names and (r.predicted or r.observed):
            assert r.provider is not None and r.client is not None
            family = r.name if r.name.startswith("vfio-") else ""
            by_pair.setdefault((r.provider, r.client, family),
                               PairPath(r.provider, r.client, family=family)).records.append(r)
    out: list[PairPath] = []
    for (p, c, family), path in by_pair.items():
        back = by_pair.get((c, p, family))
        if back is not None and p != c and back.key == path.key:
            if back.both_ways:
                continue  # drawn already, as the other direction's path
            path.both_ways = True
        out.append(path)
    return out


def _node_label(node: Node, topo: Topology, view: KernelView) -> str:
    if isinstance(node, Endpoint):
        kind = ENDPOINTS[type(node)]
        return f"{node.name}\n{kind.short}\n{kind.details(node)}"
    if isinstance(node, Switch):
        return f"{node.name}\nswitch (x3130 upstream)"
    if isinstance(node, HostBridge):
        return (f"{node.name}\nexpander host bridge\npxb-pcie, root bus "
                f"{bus_numbers(topo)[node.name]:#04x}")
    if isinstance(node, RootPort):
        return f"{node.name}\nroot port" + ("\nACS redirect on" if view.acs_requested else "")
    return f"{node.name}\n{kind_of(node).label}"


def _node_style(node: Node) -> dict[str, object]:
    if isinstance(node, Endpoint):  # blue: it offers P2P memory
        return {"shape": "box", "style": "filled", "fillcolor": "#dbeafe" if node.p2p_memory
                else "#f3f4f6"}
    if isinstance(node, Switch):
        return {"shape": "box", "style": "filled", "fillcolor": "#fef3c7"}
    if isinstance(node, HostBridge):
        return {"shape": "box", "style": "filled,bold", "fillcolor": "#e5e7eb"}
    small = {"fontsize": 9} if isinstance(node, DownstreamPort) else {}
    return {"shape": "box", "style": "rounded,filled", "fillcolor": "#ffffff", **small}


def _iommu_label(topo: Topology, view: KernelView) -> str:
    model = topo.iommu.model
    if view.iommu == "none":
        why = view.why.split(":")[0] if view.why else "driver off"
        return f"vIOMMU {model}\n(not used: {why})"
    return f"vIOMMU {model}\n" + ("translating (strict)" if view.translating
                                  else "passthrough (identity)")


def _tree(topo: Topology, view: KernelView, cpu: str) -> list[str]:
    machine = topo.profile.machine_type
    bridge = ":".join(topo.profile.host_bridge.pci_id)
    lines = [f"  subgraph cluster_{machine} {{",
             "    graph " + _attrs(label=f"{machine} root complex", style="rounded",
                                  color="#9ca3af"),
             f"    {quote(ROOT_COMPLEX)} " + _attrs(
                 label=f"host bridge {bridge}\nCPU {cpu}", shape="box",
                 style="filled,bold", fillcolor="#e5e7eb")]
    if topo.iommu.model != "none":
        lines.append(f"    {quote(VIOMMU)} " + _attrs(
            label=_iommu_label(topo, view), shape="hexagon", style="filled",
            fillcolor="#ede9fe" if view.iommu != "none" else "#f3f4f6"))
    lines.append("  }")
    if topo.iommu.model != "none":
        lines.append(f"  {quote(ROOT_COMPLEX)} -> {quote(VIOMMU)} "
                     + _attrs(dir="none", style="dotted", color="#9ca3af"))
    for node in topo.nodes():
        lines.append(f"  {quote(node.name)} " + _attrs(label=_node_label(node, topo, view),
                                                       **_node_style(node)))
    for name, parent in topo.parents().items():
        lines.append(f"  {quote(parent.name if parent else ROOT_COMPLEX)} -> {quote(name)} "
                     + _attrs(dir="none", color="#6b7280", penwidth=1.2))
    return lines


def _style(path: PairPath, r: Route) -> dict[str, object]:
    colour = COLOURS.get(path.verdict, OTHER)
    return {"color": colour, "fontcolor": colour, "constraint": "false",
            "penwidth": 1.8 if path.passed else 3.2,
            "style": "dashed" if r.how == "refused" else "solid"}


def _hops(r: Route) -> list[tuple[str, str]]:
    return list(zip(r.nodes, r.nodes[1:])) or [(r.nodes[0], r.nodes[0])]


def _path_edges(number: int, path: PairPath, r: Route) -> list[str]:
    """One path, hop by hop, its number on the hop into the node where it turns."""
    common = _style(path, r)
    if path.both_ways and r.how in ("switch", "host", "iommu"):
        common["dir"] = "both"
    hops = _hops(r)
    at = next((i for i, (_, b) in enumerate(hops) if b == r.top), len(hops) - 1)
    lines = []
    for i, (a, b) in enumerate(hops):
        attrs: dict[str, object] = dict(common)
        if i == at:
            attrs["label"] = f" {number} "
        if i == len(hops) - 1 and r.how in STOPS:
            attrs["arrowhead"] = "tee"
        lines.append(f"  {quote(a)} -> {quote(b)} {_attrs(**attrs)}")
    return lines


def _bundled_edges(drawn: Sequence[tuple[int, PairPath, Route]]) -> list[str]:
    """Many paths: one line per hop and look, as thick as the paths it carries."""
    bundles: dict[tuple, int] = {}
    for _, path, r in drawn:
        hops = _hops(r)
        for i, (a, b) in enumerate(hops):
            stop = i == len(hops) - 1 and r.how in STOPS
            if not stop and r.how in ("switch", "host", "iommu"):
                a, b = min(a, b), max(a, b)  # both directions share a line
            look = tuple(sorted(_style(path, r).items()))
            bundles[(a, b, stop, look)] = bundles.get((a, b, stop, look), 0) + 1
    lines = []
    for (a, b, stop, look), count in bundles.items():
        attrs = dict(look)
        attrs["penwidth"] = round(float(str(attrs["penwidth"])) + min(count - 1, 8) * 0.5, 1)
        attrs["arrowhead"] = "tee" if stop else "none"
        lines.append(f"  {quote(a)} -> {quote(b)} {_attrs(**attrs)}")
    return lines


def _via(r: Route, topo: Topology) -> str:
    expanders = [hb.name for hb in topo.host_bridges() if hb.name in r.nodes]
    return {"switch": f"by bus address through {r.top}",
            "self": "inside the controller (its own CMB)",
            "host": "through " + (f"{', '.join(expanders)} and " if expanders else "")
                    + f"the {topo.profile.machine_type} root complex"
                    + (" and the vIOMMU" if VIOMMU in r.nodes else ""),
            "refused": "refused at the root complex",
            "fault": "faults at the vIOMMU" if r.top == VIOMMU else "faults at the root",
            "iommu": "through the vIOMMU's mapping of the provider's BAR (VFIO/iommufd)",
            "revoked": "the client's DMA stops at the vIOMMU: the BAR's mapping was revoked",
            }[r.how]


def _table(drawn: Sequence[tuple[int, PairPath, list[Route]]], bundled: bool,
           topo: Topology) -> list[str]:
    """The numbered paths, as a table node: number (in the verdict's colour), pair,
    outcome, the way it went."""
    rows = []
    for number, path, routes in drawn:
        colour = COLOURS.get(path.verdict, OTHER)
        rows.append(f'<tr><td bgcolor="{colour}"><font color="white"><b>{number}</b></font>'
                    f'</td><td align="left">{escape(path.pair)}</td><td align="left">'
                    f'<font color="{colour}">{escape(path.outcome)}</font></td>'
                    f'<td align="left">{escape(_via(routes[0], topo)) if routes else "no path"}'
                    '</td></tr>')
    key = ("line thickness: paths sharing the hop" if bundled else "numbers: on the hop "
           "where a path turns") + "; dashed: refused; bar: stops there; bold: not as predicted"
    return ['  { rank=sink; "@paths" }',
            '  "@paths" [shape=plaintext, fontsize=9, label=<<table border="0" '
            'cellborder="1" cellspacing="0" cellpadding="3">'
            '<tr><td colspan="4"><b>P2P paths</b></td></tr>' + "".join(rows)
            + f'<tr><td colspan="4"><font point-size="8">{escape(key)}</font></td></tr>'
            '</table>>]']


def _routes(topo: Topology, path: PairPath, view: KernelView) -> list[Route]:
    """The route of a path; a path for both directions that stops on the way (refused,
    faulted) goes up from each end."""
    there = route(topo, path.provider, path.client, path.map_type, path.verdict,
                  path.translating(view))
    if there is None:
        return []
    if path.both_ways and there.how in STOPS:
        back = route(topo, path.client, path.provider, path.map_type, path.verdict,
                     path.translating(view))
        return [there, *([back] if back else [])]
    return [there]


def topology_dot(topo: Topology, records: Iterable[Record] = (), *, cpu: str | None = None,
                 title: str | None = None) -> str:
    """The DOT text of ``topo`` with a path per pair of ``records`` (judged records, or
    records that only carry a prediction).  Up to :data:`SEPARATE` paths are drawn one by
    one; more are bundled, hop by hop, so the tree stays readable."""
    view = kernel_view(topo)
    heading = title or f"{topo.name}" + (f": {topo.description}" if topo.description else "")
    lines = [f"digraph {quote(topo.name)} {{",
             "  graph " + _attrs(label=heading, labelloc="t", fontname=FONT, fontsize=13,
                                 rankdir="TB", nodesep=0.35, ranksep=0.45, bgcolor="white"),
             f"  node {_attrs(fontname=FONT, fontsize=10)}",
             f"  edge {_attrs(fontname=FONT, fontsize=10)}",
             *_tree(topo, view, cpu or topo.machine.cpu)]
    drawn = [(i, p, _routes(topo, p, view)) for i, p in enumerate(pair_paths(records, topo), 1)]
    routed = [(i, p, r) for i, p, rs in drawn for r in rs]
    bundled = len({i for i, _, _ in routed}) > SEPARATE
    if bundled:
        lines += _bundled_edges(routed)
    else:
        for i, p, r in routed:
            lines += _path_edges(i, p, r)
    if drawn:
        lines += _table(drawn, bundled, topo)
    lines.append("}")
    return "\n".join(lines) + "\n"


def predicted_records(topo: Topology, cpu: CpuInfo) -> list[Record]:
    """What the oracle predicts for every pair, as records with no observation: the paths
    of a drawing made before (or without) a run."""
    out = []
    for provider, client in pairs(topo):
        p = predict(topo, provider, client, cpu)
        out.append(Record("predicted", provider, client, p.verdict, p.reason,
                          qemu_limit=p.qemu_limit, predicted_map_type=p.map_type))
    return out
