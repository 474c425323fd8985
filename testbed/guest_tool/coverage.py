"""Which kernel functions ran: ftrace's function tracer, filtered to the functions the host
asks about, in a private tracefs instance, counted without losing a call.

    p2pdma-guest coverage setup  < request.json   # which functions can be traced; start
    p2pdma-guest coverage read                    # calls per function since the last read
    p2pdma-guest coverage teardown

The request (JSON on stdin) names, per source file, the functions the host found defined
there (``{"files": {"drivers/pci/p2pdma.c": [{"name": "calc_map_type_and_dist",
"module": null, "addr": null}, ...]}, "text": null}``: ``module`` when the host knows the
file is built into one, ``addr`` a link-time address from the build's debug information,
``text`` the link-time address of ``_text`` to turn it into a run-time one).

Each function is looked up in ``available_filter_functions_addrs`` (the functions ftrace
can hook; compiler clones such as ``foo.part.0`` count as ``foo``) and, when it is not
there, in ``/proc/kallsyms``: found in neither, it was inlined or not built (or its
module is not loaded); found only in kallsyms, it is ``notrace``/``noinstr``.  A name that
several objects define (``size_show``) is pinned to the copy nearest to the debug
information's address or to the file's other functions; when that cannot decide it is
reported ambiguous, never guessed.  The filter is set by ftrace's own index of each
function (one write per function), the buffer per CPU is sized from the guest's memory,
and three options keep the log small and exact: ``func-no-repeats`` (a loop's calls become
one entry with a count), ``nocontext-info`` and ``sym-addr`` (each line is just
``name <address>``).  ``read`` drains ``trace_pipe`` (a consuming read: every entry is
counted once) and adds the instance's per-CPU ``overrun``/``dropped events`` counters
since the setup to the document, so a lost entry is seen, never silent.

A file none of whose functions is in the kernel at the setup may be in a module a workload
loads (vfio-type1 loads vfio_iommu_type1, nvmet-p2pmem nvmet): for every module in the
file's directory under ``/lib/modules/<release>/kernel`` that is not loaded, the filter
gets ``*:mod:<module>``, which ftrace keeps until the module loads and then applies to this
instance at once, so the calls of the workload that loads it are counted (by name: their
addresses are not known before, and the function tracer's line names no module); the next ``read`` adds the file's functions
by index as for any module loaded since the setup.
"""

import errno
import json
import os
import re
import time

from .symbols import base_name, grep_words, parse_filter_functions, resolve

TRACEFS = "/sys/kernel/tracing"
INSTANCE = "p2ptbcov"
STATE = "/run/p2pdma-guest-coverage.json"
# ftrace's function entry: "name <ffffffff81a0b380>" [" (repeats: N, last_ts: T)"]
# (a module's function: "name [module] <address>")
ENTRY = re.compile(r"^\s*(?:.*:\s+)?(?P<name>[\w.$]+)(?: \[(?P<mod>\w+)\])? "
                   r"<(?P<addr>[0-9a-f]+)>(?: \(repeats: (?P<rep>\d+))?")
LOST = re.compile(r"CPU:(\d+) \[LOST (\d+) EVENTS\]")
STATS = ("overrun", "dropped events", "commit overrun")
OPTIONS = ("noprint-parent", "sym-addr", "nosym-offset", "nocontext-info", "func-no-repeats",
           "noirq-info", "norecord-cmd", "overwrite")


def _read(path, default=None):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def _write(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _inst():
    return f"{TRACEFS}/instances/{INSTANCE}"


def _stats():
    """{cpu: {"overrun": n, "dropped events": n, "commit overrun": n}} of the instance."""
    out = {}
    base = f"{_inst()}/per_cpu"
    for cpu in sorted(os.listdir(base)) if os.path.isdir(base) else ():
        counts = {}
        for line in (_read(f"{base}/{cpu}/stats", "") or "").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in STATS:
                try:
                    counts[key.strip()] = int(value.strip())
                except ValueError:
                    pass
        out[cpu] = counts
    return out


def _buffer_kb():
    """Per-CPU buffer: 1/64 of the guest's memory shared by its CPUs, 1-16 MiB."""
    mem = 0
    for line in (_read("/proc/meminfo", "") or "").splitlines():
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1])
    cpus = max(1, len([c for c in os.listdir(f"{TRACEFS}/per_cpu")
                       if c.startswith("cpu")]) if os.path.isdir(f"{TRACEFS}/per_cpu") else 1)
    return max(1024, min(16384, mem // 64 // cpus))


def _modules():
    return sorted(line.split()[0] for line in (_read("/proc/modules", "") or "").splitlines()
                  if line.strip())


def _module_candidates(path, loaded):
    """The modules not loaded now that may hold source file ``path``: the ``.ko`` files of
    its directory (a module's objects are built beside their sources)."""
    where = os.path.join("/lib/modules", os.uname().release, "kernel", os.path.dirname(path))
    try:
        names = os.listdir(where)
    except OSError:
        return []
    mods = {n.split(".ko")[0].replace("-", "_") for n in names if ".ko" in n}
    return sorted(mods - set(loaded))


def _cache_modules(resolved, files, state):
    """Trace the modules that may hold a file with no function in the kernel now from the
    moment they load (``*:mod:<module>``, kept by ftrace until then); ``state["by_name"]``
    maps {function: file} (None: two such files define it) to count their calls by name."""
    cached = state.setdefault("cached_modules", [])
    by_name = state.setdefault("by_name", {})
    fd = os.open(f"{_inst()}/set_ftrace_filter", os.O_WRONLY | os.O_APPEND)
    try:
        for path, doc in resolved.items():
            mods = [] if doc["traced"] else _module_candidates(path, state["modules"])
            for mod in mods:
                if mod in cached:
                    continue
                try:  # ~0.3 s each under TCG: ftrace looks at every function it knows
                    os.write(fd, f"*:mod:{mod}\n".encode())
                    cached.append(mod)
                except OSError:
                    pass
            if not mods:
                continue
            for f in files.get(path, ()):
                if by_name.setdefault(f["name"], path) != path:
                    by_name[f["name"]] = None
    finally:
        os.close(fd)


def _text_offset(link_text):
    """Run-time minus link-time address of ``_text`` (KASLR), 0 when unknown."""
    if not link_text:
        return 0
    for line in grep_words([("/proc/kallsyms", {"_text"}, False)])[0].splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "_text":
            return int(parts[0], 16) - int(link_text)
    return 0


def _select(resolved, state):
    """Add the traced functions' entries to the filter, one index per write; record their
    addresses in ``state``.  Returns the functions whose filter write failed."""
    fd = os.open(f"{_inst()}/set_ftrace_filter", os.O_WRONLY | os.O_APPEND)
    refused = {}
    try:
        for path, doc in resolved.items():
            for name, es in list(doc["traced"].items()):
                ok = False
                for index, addr, _symbol, _module in es:
                    try:
                        os.write(fd, f"{index}\n".encode())
                        state["addrs"][str(addr)] = [path, name]
                        ok = True
                    except OSError as exc:
                        refused[(path, name)] = errno.errorcode.get(exc.errno or 0, "error")
                if not ok:
                    del doc["traced"][name]
                    doc["untraced"][name] = "refused"
    finally:
        os.close(fd)
    return refused


def _summary(resolved):
    return {path: {"traced": {n: sorted({e[3] or "vmlinux" for e in es})[0]
                              for n, es in doc["traced"].items()},
                   "untraced": doc["untraced"]} for path, doc in resolved.items()}


def setup(request=None):
    """Start tracing the requested functions; a document that says which could be traced."""
    from .trace import _ensure_tracefs  # mounting tracefs is the mechanism probes' job too
    start = time.monotonic()
    if request is None:
        import sys  # the request comes on stdin
        request = json.loads(sys.stdin.read() or "{}")
    files = request.get("files") or {}
    problems: list = []
    out = {"ok": False, "problems": problems, "files": {}}
    problem = _ensure_tracefs()
    aff_path = f"{TRACEFS}/available_filter_functions_addrs"
    if problem is None and not os.path.exists(aff_path):
        problem = ("the kernel lists no available_filter_functions_addrs (needs "
                   "CONFIG_FUNCTION_TRACER and CONFIG_DYNAMIC_FTRACE, Linux 6.5 or later)")
    if problem is None and "function" not in (_read(f"{TRACEFS}/available_tracers", "") or ""):
        problem = "the kernel has no function tracer (CONFIG_FUNCTION_TRACER)"
    if problem:
        problems.append(problem)
        return out
    teardown()
    names = {f["name"] for funcs in files.values() for f in funcs}
    aff, ksyms = grep_words([(aff_path, names, True), ("/proc/kallsyms", names, False)])
    entries = [e for e in parse_filter_functions(aff, True) if base_name(e[2]) in names]
    resolved = resolve(files, entries, ksyms, _text_offset(request.get("text")))
    inst = _inst()
    os.makedirs(inst, exist_ok=True)
    _write(f"{inst}/tracing_on", "0")
    kb = _buffer_kb()
    _write(f"{inst}/buffer_size_kb", str(kb))
    state = {"request": request, "addrs": {}, "modules": _modules(),
             "objects": {p: sorted({e[3] or "vmlinux" for es in d["traced"].values()
                                    for e in es}) for p, d in resolved.items()}}
    _select(resolved, state)
    if not state["addrs"]:  # an empty filter would trace every function of the kernel
        problems.append(f"none of the functions of {', '.join(sorted(files))} can be traced "
                        "(not in the running kernel)")
        teardown()
        out.update(files=_summary(resolved), seconds=round(time.monotonic() - start, 3))
        return out
    _cache_modules(resolved, files, state)
    _write(f"{inst}/current_tracer", "function")
    for opt in OPTIONS:  # after the tracer: func-no-repeats is the function tracer's own
        try:
            _write(f"{inst}/trace_options", opt)
        except OSError:
            if opt in ("sym-addr", "func-no-repeats", "nocontext-info"):
                problems.append(f"trace option {opt} refused")
    _write(f"{inst}/trace", "")
    _write(f"{inst}/tracing_on", "1")
    state["stats"] = _stats()
    with open(STATE, "w") as f:
        json.dump(state, f)
    out.update(ok=True, files=_summary(resolved), buffer_kb=kb,
               seconds=round(time.monotonic() - start, 3))
    return out


def _drain():
    """Everything in trace_pipe now (a consuming, non-blocking read)."""
    fd = os.open(f"{_inst()}/trace_pipe", os.O_RDONLY | os.O_NONBLOCK)
    chunks = []
    try:
        while True:
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(fd)
    return b"".join(chunks).decode(errors="replace")


def count(text, addrs, names=None):
    """({address: calls}, lost entries the pipe reported) of drained trace text; ``names``
    (a dict) gets {address: [function, module]} of every entry.

        >>> count("f <ffffffff81000004>\\nf <ffffffff81000004> (repeats: 3, last_ts: 1.0)\\n"
        ...       "CPU:1 [LOST 7 EVENTS]\\n", {})
        ({'18446744071578845188': 4}, 7)
        >>> seen = {}
        >>> count("vfio_pin_pages_remote [vfio_iommu_type1] <ffffffffc0a01234>\\n", {}, seen)
        ({'18446744072646300212': 1}, 0)
        >>> seen
        {'18446744072646300212': ['vfio_pin_pages_remote', 'vfio_iommu_type1']}
    """
    counts: dict = {}
    lost = 0
    for line in text.splitlines():
        m = ENTRY.match(line)
        if m:
            key = str(int(m["addr"], 16))
            if names is not None:
                names[key] = [m["name"], m["mod"]]
            # a "repeats: N" entry stands for the N calls after the one logged before it
            counts[key] = counts.get(key, 0) + (int(m["rep"]) if m["rep"] else 1)
            continue
        lm = LOST.search(line)
        if lm:
            lost += int(lm[2])
    return counts, lost


def _reresolve(state):
    """Modules loaded or unloaded since the last look: trace what they now bring in, for
    the files that have no function in vmlinux (a module's files)."""
    mods = _modules()
    if mods == state.get("modules"):
        return None
    state["modules"] = mods
    files = {p: fs for p, fs in state["request"].get("files", {}).items()
             if "vmlinux" not in state["objects"].get(p, ())}
    if not files:
        return None
    names = {f["name"] for funcs in files.values() for f in funcs}
    entries = parse_filter_functions(grep_words(
        [(f"{TRACEFS}/available_filter_functions_addrs", names, True)])[0], True)
    resolved = resolve(files, [e for e in entries if e[3] is not None
                               and base_name(e[2]) in names], "", 0)
    known = set(state["addrs"])
    for path, doc in resolved.items():
        doc["untraced"] = {}
        doc["traced"] = {n: fresh for n, es in doc["traced"].items()
                         if (fresh := [e for e in es if str(e[1]) not in known])}
        state["objects"][path] = sorted(set(state["objects"].get(path, ())) | {
            e[3] for es in doc["traced"].values() for e in es})
    _select(resolved, state)
    return {p: d["traced"] for p, d in _summary(resolved).items() if d["traced"]}


def read():
    """Calls per (file, function) since the last read, and what was lost."""
    state_text = _read(STATE)
    if state_text is None or not os.path.isdir(_inst()):
        return {"ok": False, "why": "coverage tracing is not set up in this boot "
                                    "(p2pdma-guest coverage setup)"}
    state = json.loads(state_text)
    start = time.monotonic()
    seen: dict = {}
    counts, lost = count(_drain(), state["addrs"], seen)
    calls: dict = {}
    unknown = 0
    by_name = state.get("by_name", {})
    for addr, n in counts.items():
        where = state["addrs"].get(addr)
        if where is None:  # a function of a module that loaded since: by its name
            name = base_name(seen.get(addr, [""])[0] or "")
            path = by_name.get(name)
            where = [path, name] if path else None
        if where is None:
            unknown += n
            continue
        per_file = calls.setdefault(where[0], {})
        per_file[where[1]] = per_file.get(where[1], 0) + n
    stats = _stats()
    before = state.get("stats", {})
    missed = sum(max(0, v - before.get(cpu, {}).get(k, 0))
                 for cpu, counts_ in stats.items() for k, v in counts_.items())
    state["stats"] = stats
    added = _reresolve(state)
    with open(STATE, "w") as f:
        json.dump(state, f)
    return {"ok": True, "calls": calls, "lost": lost + missed, "unknown": unknown,
            "newly_traced": added or {}, "seconds": round(time.monotonic() - start, 3)}


def teardown():
    inst = _inst()
    if os.path.isdir(inst):
        for path, text in ((f"{inst}/tracing_on", "0"), (f"{inst}/current_tracer", "nop"),
                           (f"{inst}/set_ftrace_filter", "")):
            try:
                _write(path, text)
            except OSError:
                pass
        try:
            os.rmdir(inst)
        except OSError:
            pass
    try:
        os.unlink(STATE)
    except OSError:
        pass
    return {"ok": True}
