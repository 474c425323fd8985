"""Which kernel functions a request's names are, in the running kernel: ftrace's list of the
functions it can hook (``available_filter_functions_addrs``, with its own index of each) and
``/proc/kallsyms`` for the ones it cannot, read with grep(1) (the kernel prints 50,000-
200,000 lines, which Python would take seconds more to look at under TCG).  Used by
``coverage setup``: see :mod:`coverage` for the tracing itself.
"""

NEAR = 1 << 20  # a copy further than this from its file's other functions is not its own


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
