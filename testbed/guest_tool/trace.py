"""What the guest kernel itself decided for each P2P transfer: the map type, the distance,
and the IOMMU's part, from the kernel's own tracing (tracefs dynamic events, no tools).

    p2pdma-guest trace setup      # once per boot, before the first P2P I/O if possible
    p2pdma-guest trace read       # the events since the last read (then cleared)
    p2pdma-guest trace teardown

Where Linux 7.x decides (drivers/pci/p2pdma.c): ``calc_map_type_and_dist()`` computes the
map type and distance once per (provider, client) (the type is then cached per client
until the provider is unbound) and ``pci_p2pdma_map_type()`` returns it for every P2P
request.  Two function-exit probes record both with the devices' names (BDFs), in a
private tracefs instance (``p2ptb``), with the ``iommu`` map/unmap events beside them.
Without BTF argument names a kretprobe with raw offsets stands in; without the function
or the tracing options the reason is reported, never an error.

The copy and passthru sub-commands call :func:`clear` before and :func:`read` after their
transfers (``--observe``), so each record gets the events of its own transfers.
"""

import errno
import json
import os
import re
import time

from . import schema

TRACEFS = "/sys/kernel/tracing"
INSTANCE = "p2ptb"
GROUP = "p2ptb"
STATE = "/run/p2pdma-guest-trace.json"  # calc results outlive the per-read clearing
MAP_TYPES = {0: "unknown", 1: "none", 2: schema.NOT_SUPPORTED, 3: schema.BUS_ADDRESS,
             4: schema.HOST_BRIDGE}
PROBES = {
    # BTF argument names: CONFIG_FPROBE_EVENTS + CONFIG_PROBE_EVENTS_BTF_ARGS + BTF
    "map_type": "f:{g}/map_type pci_p2pdma_map_type%return"
                " provider=provider->owner->kobj.name:string client=dev->kobj.name:string"
                " map=$retval:s32",
    "calc": "f:{g}/calc calc_map_type_and_dist%return"
            " provider=provider->dev.kobj.name:string client=client->dev.kobj.name:string"
            " dist=+0(dist):s32 map=$retval:s32",
}
# Without BTF: a kretprobe with offsets that have been 0 forever (p2pdma_provider.owner,
# device.kobj, kobject.name); calc's pair then comes from the next map_type of the task.
FALLBACK = {"map_type": "r:{g}/map_type pci_p2pdma_map_type"
                        " provider=+0(+0(+0($arg1))):string client=+0(+0($arg2)):string"
                        " map=$retval:s32",
            "calc": "r:{g}/calc calc_map_type_and_dist dist=+0($arg3):s32 map=$retval:s32"}
DMA_BUF_EVENTS = ("dma_buf_export", "dma_buf_fd", "dma_buf_get", "dma_buf_put",
                  "dma_buf_dynamic_attach", "dma_buf_detach")
LINE = re.compile(r"^\s*(?P<task>.+?)-(?P<pid>\d+)\s+\[(?P<cpu>\d+)\]\s+\S+\s+"
                  r"(?P<ts>[\d.]+):\s+(?P<event>\w+):\s+(?P<rest>.*)$")
FIELD = re.compile(r'(\w+)=("(?:[^"]*)"|\S+)')
BDF = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]")
MAX_OTHER_EVENTS = 64
MOUNT_SECONDS = 30  # mount(8) of tracefs


def _read(path, default=None):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def _write(path, text, append=False):
    fd = os.open(path, os.O_WRONLY | (os.O_APPEND if append else os.O_TRUNC))
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _instance():
    return f"{TRACEFS}/instances/{INSTANCE}"


def _last_error():
    log = (_read(f"{TRACEFS}/error_log", "") or "").strip().splitlines()
    return " ".join(line.strip() for line in log[-3:]) or None


def _ensure_tracefs():
    """None when dynamic events can be defined, else why not."""
    if os.path.exists(f"{TRACEFS}/dynamic_events"):
        return None
    if os.path.isdir(TRACEFS) and not os.path.ismount(TRACEFS):
        # tracefs is not mounted at boot: mount(8), started with os.posix_spawn (importing
        # ctypes costs 0.3 s under TCG, subprocess 0.3-0.5 s)
        _run_bounded(["mount", "-t", "tracefs", "nodev", TRACEFS], MOUNT_SECONDS)
        if os.path.exists(f"{TRACEFS}/dynamic_events"):
            return None
    if not os.path.isdir(TRACEFS):
        return "the kernel has no tracefs (CONFIG_TRACING)"
    if not os.path.exists(f"{TRACEFS}/events"):
        return "tracefs could not be mounted"
    return "the kernel has no dynamic events (CONFIG_DYNAMIC_EVENTS, CONFIG_KPROBE_EVENTS)"


def _run_bounded(argv, seconds):
    """Run ``argv`` (found on PATH) with no input or output; its exit status, None when it
    could not start or was killed after ``seconds``."""
    try:
        with open(os.devnull, "r+b") as null:
            pid = os.posix_spawnp(argv[0], argv, os.environ, file_actions=[
                (os.POSIX_SPAWN_DUP2, null.fileno(), fd) for fd in (0, 1, 2)])
    except OSError:
        return None
    deadline = time.monotonic() + seconds
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return None
        time.sleep(0.01)


def _add_probe(name, notes):
    """Define one dynamic event; (mode, error): mode 'btf', 'plain' or None."""
    err = None
    for mode, table in (("btf", PROBES), ("plain", FALLBACK)):
        if err:
            notes.append(f"{name}: {err}; trying the {mode} probe")
        try:
            _write(f"{TRACEFS}/error_log", "")
        except OSError:
            pass
        try:
            _write(f"{TRACEFS}/dynamic_events", table[name].format(g=GROUP) + "\n", append=True)
            return mode, None
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                return "existing", None
            code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            err = f"{code}: {_last_error() or exc.strerror}"
    return None, err


def setup():
    """Define and enable the probes in a private instance; a document that says what works."""
    probes: dict = {}
    problems: list = []
    notes: list = []
    out: dict = {"ok": False, "probes": probes, "btf": os.path.exists("/sys/kernel/btf/vmlinux"),
                 "iommu_events": False, "problems": problems, "notes": notes}
    problem = _ensure_tracefs()
    if problem:
        problems.append(problem)
        return out
    teardown()
    for name in PROBES:
        mode, err = _add_probe(name, notes)
        probes[name] = mode
        if err:
            problems.append(f"{name}: {err}")
    inst = _instance()
    os.makedirs(inst, exist_ok=True)
    _write(f"{inst}/buffer_size_kb", "1024")
    for name, mode in probes.items():
        if mode:
            _write(f"{inst}/events/{GROUP}/{name}/enable", "1")
    for event in ("map", "unmap", "io_page_fault"):
        if os.path.exists(f"{inst}/events/iommu/{event}/enable"):
            _write(f"{inst}/events/iommu/{event}/enable", "1")
            out["iommu_events"] = True
    for event in DMA_BUF_EVENTS:  # the dma-buf life cycle (VFIO export, iommufd import)
        if os.path.exists(f"{inst}/events/dma_buf/{event}/enable"):
            _write(f"{inst}/events/dma_buf/{event}/enable", "1")
            out.setdefault("dma_buf_events", []).append(event)
    _write(f"{inst}/trace", "")
    _write(f"{inst}/tracing_on", "1")
    with open(STATE, "w") as f:
        json.dump({"calc": {}, "setup": out}, f)
    out["ok"] = bool(probes.get("map_type"))
    return out


def teardown():
    inst = _instance()
    if os.path.isdir(inst):
        try:
            _write(f"{inst}/events/enable", "0")
        except OSError:
            pass
        try:
            os.rmdir(inst)
        except OSError:
            pass
    removed = []
    group_dir = f"{TRACEFS}/events/{GROUP}"
    names = sorted(e for e in (os.listdir(group_dir) if os.path.isdir(group_dir) else ())
                   if os.path.isdir(f"{group_dir}/{e}"))  # ours and vfiotrace's
    for name in names or PROBES:
        try:
            _write(f"{TRACEFS}/dynamic_events", f"-:{GROUP}/{name}\n", append=True)
            removed.append(name)
        except OSError:
            pass
    return {"ok": True, "removed": removed}


def active():
    """Why tracing is not set up in this boot, or None when it is."""
    state = _read(STATE)
    if state is None or not os.path.isdir(_instance()):
        return "tracing was not set up in this boot (p2pdma-guest trace setup)"
    try:
        setup_doc = json.loads(state).get("setup", {})
    except ValueError:
        return "the trace state file is damaged"
    if not setup_doc.get("probes", {}).get("map_type"):
        return "; ".join(setup_doc.get("problems", [])) or "the map-type probe is missing"
    return None


def clear():
    """Forget the events so far (the calc results are kept)."""
    if os.path.isdir(_instance()):
        read()


def parse(text):
    """The trace's events as dicts (task, pid, event, fields)."""
    for line in text.splitlines():
        m = LINE.match(line)
        if not m or line.startswith("#"):
            continue
        rest = m["rest"]
        if rest.startswith("("):  # a probe: "(caller <- func) k=v ..."
            rest = rest.split(") ", 1)[-1]
        fields = {k: v.strip('"') for k, v in FIELD.findall(rest)}
        yield {"ts": float(m["ts"]), "pid": m["pid"], "event": m["event"], **fields}


def p2pmem_bars():
    """(bdf, bar, start, end) of every memory BAR of every p2pmem provider."""
    out = []
    base = "/sys/bus/pci/devices"
    for bdf in sorted(os.listdir(base)):
        if not os.path.isdir(f"{base}/{bdf}/p2pmem"):
            continue
        for i, line in enumerate((_read(f"{base}/{bdf}/resource", "") or "").splitlines()[:6]):
            start, end, flags = (int(x, 16) for x in line.split())
            if end and flags & 0x200:  # IORESOURCE_MEM
                out.append((bdf, i, start, end))
    return out


def domains(bdfs):
    """IOMMU group and domain type (``DMA``, ``identity``, ...) of each device that has one."""
    out = {}
    for bdf in sorted(bdfs):
        link = f"/sys/bus/pci/devices/{bdf}/iommu_group"
        if os.path.exists(link):
            group = os.path.basename(os.path.realpath(link))
            out[bdf] = {"group": int(group), "type": (_read(
                f"/sys/kernel/iommu_groups/{group}/type") or "").strip()}
    return out


def sysfs_distance(a, b):
    """calc_map_type_and_dist()'s hop count, from the sysfs tree (ACS does not change it)."""
    def chain(bdf):
        parts = os.path.realpath(f"/sys/bus/pci/devices/{bdf}").split("/")
        return [x for x in parts if BDF.fullmatch(x)][::-1]  # the device first
    ca, cb = chain(a), chain(b)
    for i, x in enumerate(ca):
        if x in cb:
            return i + cb.index(x)
    return len(ca) + len(cb)


def _iommu_evidence(maps, unmaps, faults, extra_bars=()):
    """The IOMMU's part: maps of a P2P provider's BAR (p2pmem providers, and
    ``extra_bars``: (bdf, bar, start, end) of BARs handed to VFIO) and unmaps."""
    bars = p2pmem_bars() + list(extra_bars)
    p2p_maps: list = []
    live: dict = {}
    p2p_unmaps = 0
    # (maps seen before it, iova[, size]): replayed in order
    pending = [(u[0], u[1], u[2] if len(u) > 2 else 0) for u in unmaps]
    unmaps = list(pending)
    for n, (iova, paddr, size) in enumerate(maps + [(None, None, None)]):
        while pending and pending[0][0] <= n:
            _, u_iova, _ = pending.pop(0)
            p2p_unmaps += bool(live.pop(u_iova, False))
        if iova is None:
            break
        hit = next(((bdf, bar) for bdf, bar, start, end in bars if start <= paddr <= end), None)
        live[iova] = bool(hit)
        if hit:
            p2p_maps.append({"provider": hit[0], "bar": hit[1], "iova": hex(iova),
                             "paddr": hex(paddr), "size": size})
    return {"maps": len(maps), "unmaps": len(unmaps), "p2p_maps": p2p_maps[:8],
            "p2p_map_count": len(p2p_maps), "p2p_unmap_count": p2p_unmaps,
            "unmapped": [[hex(i), s] for _, i, s in unmaps[:16]],
            "io_page_faults": faults}


def read(extra_bars=()):
    """The map types per (provider, client) and the IOMMU evidence since the last read;
    ``extra_bars`` count as P2P BARs too (see :func:`_iommu_evidence`); any other event
    of the instance (dma-buf tracepoints, VFIO probes) is listed under ``events``."""
    why = active()
    if why:
        return {schema.MECH_OK: False, schema.MECH_WHY: why}
    inst = _instance()
    text = _read(f"{inst}/trace", "") or ""
    _write(f"{inst}/trace", "")
    try:
        state = json.loads(_read(STATE, "{}") or "{}")
    except ValueError:
        state = {}
    decided = state.setdefault("calc", {})
    pairs: dict = {}
    maps: list = []
    unmaps: list = []
    faults = 0
    others: list = []
    events = list(parse(text))
    for i, ev in enumerate(events):
        if ev["event"] == "calc" and "provider" not in ev:  # the raw probe: pair from the next
            nxt: dict = next((e for e in events[i + 1:] if e["event"] == "map_type"
                              and e["pid"] == ev["pid"]), {})
            ev["provider"], ev["client"] = nxt.get("provider", "?"), nxt.get("client", "?")
    decided_now = set()
    for ev in events:
        kind = ev["event"]
        if kind in ("map_type", "calc"):
            key = f"{ev.get('provider', '?')} {ev.get('client', '?')}"
            try:
                map_type = MAP_TYPES.get(int(ev["map"]), ev["map"])
            except (KeyError, ValueError):
                continue
            if kind == "calc":
                decided[key] = {"map_type": map_type, "distance":
                                int(ev["dist"]) if ev.get("dist", "").lstrip("-").isdigit()
                                else None}
                decided_now.add(key)
            else:
                p = pairs.setdefault(key, {"requests": 0, "map_types": {}})
                p["requests"] += 1
                p["map_types"][map_type] = p["map_types"].get(map_type, 0) + 1
        elif kind == "map" and "paddr" in ev:
            maps.append((int(ev["iova"], 16), int(ev["paddr"], 16), int(ev["size"])))
        elif kind == "unmap" and "iova" in ev:
            unmaps.append((len(maps), int(ev["iova"], 16), int(ev.get("size") or 0)))
        elif kind == "io_page_fault":
            faults += 1
        elif len(others) < MAX_OTHER_EVENTS:
            others.append({k: v for k, v in ev.items() if k != "pid"})
    with open(STATE, "w") as f:
        json.dump(state, f)
    observed = []
    for key, p in sorted(pairs.items()):
        provider, client = key.split(" ")
        calc = decided.get(key)
        observed.append({"provider": provider, "client": client,
                         "map_type": max(p["map_types"], key=p["map_types"].get),
                         "map_types": p["map_types"], "requests": p["requests"],
                         "distance": calc["distance"] if calc else None,
                         "decided_now": key in decided_now,
                         "sysfs_distance": sysfs_distance(provider, client)
                         if "?" not in key else None})
    devices = {b for o in observed for b in (o["provider"], o["client"]) if b != "?"}
    m = re.search(r"entries-in-buffer/entries-written: (\d+)/(\d+)", text)
    return {schema.MECH_OK: True, "observed": observed,
            "lost_events": int(m[2]) - int(m[1]) if m else None, "events": others,
            "iommu": dict(_iommu_evidence(maps, unmaps, faults, extra_bars),
                          domains=domains(devices | {b for b, *_ in p2pmem_bars()}
                                          | {b for b, *_ in extra_bars}))}
