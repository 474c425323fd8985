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
"""

import errno
import json
import os
import re
import time

TRACEFS = "/sys/kernel/tracing"
INSTANCE = "p2ptbcov"
STATE = "/run/p2pdma-guest-coverage.json"
# ftrace's function entry: "name <ffffffff81a0b380>" [" (repeats: N, last_ts: T)"]
ENTRY = re.compile(r"^\s*(?:.*:\s+)?(?P<name>[\w.$]+) <(?P<addr>[0-9a-f]+)>"
                   r"(?: \(repeats: (?P<rep>\d+))?")
LOST = re.compile(r"CPU:(\d+) \[LOST (\d+) EVENTS\]")
STATS = ("overrun", "dropped events", "commit overrun")
OPTIONS = ("noprint-parent", "sym-addr", "nosym-offset", "nocontext-info", "func-no-repeats",
           "noirq-info", "norecord-cmd", "overwrite")
NEAR = 1 << 20  # a copy further than this from its file's other functions is not its own


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


def base_name(symbol):
    """A compiler clone's symbol is its function's: ``foo.part.0`` -> ``foo``.

        >>> base_name("nvme_prep_rq.part.0"), base_name("dma_map_area.isra.0")
        ('nvme_prep_rq', 'dma_map_area')
    """
    return symbol.split(".", 1)[0]


def parse_filter_functions(text, numbered=False):
    """``available_filter_functions_addrs`` lines -> [(index, address, symbol, module)]; the
    index is ftrace's own (the 1-based line number, what the filter accepts); ``numbered``:
    the lines carry it as ``grep -n`` prints it.

        >>> parse_filter_functions("ffffffff81a0b380 blk_map_iter_next\\n"
        ...                        "ffffffffc0400014 viommu_remove [virtio_iommu]\\n")
        [(1, 18446744071589376896, 'blk_map_iter_next', None), (2, 18446744072640004116, \
'viommu_remove', 'virtio_iommu')]
        >>> parse_filter_functions("7:ffffffff81a0b380 blk_map_iter_next", numbered=True)[0][0]
        7
    """
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if numbered:
            num, _, line = line.partition(":")
            i = int(num)
        parts = line.split()
        if len(parts) < 2:
            continue
        module = parts[2].strip("[]") if len(parts) > 2 else None
        out.append((i, int(parts[0], 16), parts[1], module))
    return out


def parse_kallsyms(text, wanted):
    """{function: [(address, module)]} of the text symbols among ``wanted`` base names."""
    out: dict = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3 or parts[1] not in "tTwW":
            continue
        name = base_name(parts[2])
        if name in wanted:
            out.setdefault(name, []).append(
                (int(parts[0], 16), parts[3].strip("[]") if len(parts) > 3 else None))
    return out


def grep_words(searches):
    """For each (path, words, numbered): the lines of ``path`` that hold one of ``words``
    as a word (``foo`` also finds ``foo.part.0``), by grep(1), the searches at the same
    time: the kernel's symbol lists have 50,000-200,000 lines, which the kernel takes
    seconds to print under TCG and Python seconds more to look at."""
    import subprocess  # only here: one grep per list instead of seconds of Python per line
    procs: list = []
    for path, words, numbered in searches:
        if not words:
            procs.append(None)
            continue
        p = subprocess.Popen(["grep", "-w", "-F", "-f", "-", *(["-n"] if numbered else []),
                              path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write(("\n".join(sorted(words)) + "\n").encode())
        p.stdin.close()
        procs.append(p)
    out = []
    for p in procs:
        if p is None:
            out.append("")
            continue
        try:
            data = p.stdout.read()
            p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            data = b""
        out.append(data.decode(errors="replace"))
    return out


def _pick(cands, anchor):
    """The candidate (index, addr, symbol, module) nearest to ``anchor``, or None when no
    anchor, or two are about as near, or the nearest is too far to be the file's own."""
    if anchor is None:
        return None
    ranked = sorted(cands, key=lambda c: abs(c[1] - anchor))
    best = abs(ranked[0][1] - anchor)
    if best > NEAR or (len(ranked) > 1 and abs(ranked[1][1] - anchor) - best < 64):
        return None
    return ranked[0]


def resolve(files, entries, kallsyms_text, text_offset=0):
    """Decide, per file and function, which filter entries are its own.

    ``files``: {path: [{"name", "module", "addr"}]}; ``entries``: parse_filter_functions().
    Returns {path: {"traced": {name: [(index, addr, symbol, module)]},
    "untraced": {name: reason}}} with reasons ``notrace``, ``absent``, ``ambiguous``.
    """
    by_base: dict = {}
    for e in entries:
        by_base.setdefault(base_name(e[2]), []).append(e)
    wanted = {f["name"] for funcs in files.values() for f in funcs}
    missing = {n for n in wanted if n not in by_base}
    ksyms = parse_kallsyms(kallsyms_text, missing) if missing and kallsyms_text else {}
    out = {}
    for path, funcs in files.items():
        traced, untraced, pending = {}, {}, []
        for f in funcs:
            name, module = f["name"], f.get("module")
            cands = [e for e in by_base.get(name, ()) if module is None or e[3] == module]
            if not cands:
                untraced[name] = "notrace" if any(
                    module is None or m == module for _, m in ksyms.get(name, ())) \
                    else "absent"
                continue
            symbols = [e[2] for e in cands]
            if len(set(symbols)) == len(symbols) and len({e[3] for e in cands}) == 1:
                traced[name] = cands  # one copy (and its clones)
            else:
                pending.append((f, cands))
        # the file's unique functions tell where its code lies
        anchors = sorted(e[1] for es in traced.values() for e in es)
        median = anchors[len(anchors) // 2] if anchors else None
        for f, cands in pending:
            anchor = f["addr"] + text_offset if f.get("addr") else median
            picked = []
            for symbol in sorted({e[2] for e in cands}):
                same = [e for e in cands if e[2] == symbol]
                one = same[0] if len(same) == 1 and f.get("addr") is None and \
                    len({e[3] for e in cands}) == 1 else _pick(same, anchor)
                if one is not None:
                    picked.append(one)
            if picked:
                traced[f["name"]] = picked
            else:
                untraced[f["name"]] = "ambiguous"
        out[path] = {"traced": traced, "untraced": untraced}
    return out


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
        problems.append("none of the functions can be traced")
        teardown()
        out.update(files=_summary(resolved), seconds=round(time.monotonic() - start, 3))
        return out
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


def count(text, addrs):
    """({address: calls}, lost entries the pipe reported) of drained trace text.

        >>> count("f <ffffffff81000004>\\nf <ffffffff81000004> (repeats: 3, last_ts: 1.0)\\n"
        ...       "CPU:1 [LOST 7 EVENTS]\\n", {})
        ({'18446744071578845188': 4}, 7)
    """
    counts: dict = {}
    lost = 0
    for line in text.splitlines():
        m = ENTRY.match(line)
        if m:
            key = str(int(m["addr"], 16))
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
    counts, lost = count(_drain(), state["addrs"])
    calls: dict = {}
    unknown = 0
    for addr, n in counts.items():
        where = state["addrs"].get(addr)
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
