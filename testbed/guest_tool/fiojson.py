"""fio's --output-format=json, read robustly and summarised (pure; unit-tested on real
output of fio 3.39).

fio writes warnings and per-job error lines (``fio: pid=212, err=84/file:io_u.c:2290,
...``) into the same stream before the JSON document, so parsing starts at the first
``{``.  Per job: ``error`` is an errno (0 ok, 84 EILSEQ a verify failure, 12 ENOMEM the
p2pmem pool at mmap, 14 EFAULT io_uring fixedbufs, 22 EINVAL a refused P2P mapping);
``total_err``/``first_error`` exist only with --continue_on_error.  With verification the
read side includes the verify reads; a --verify_only run reports write bytes with no time.
"""

import json

EILSEQ = 84  # what fio reports for a verify failure
PERCENTILES = {"p50": "50.000000", "p90": "90.000000", "p99": "99.000000",
               "p99.9": "99.900000"}
DIRECTIONS = ("read", "write", "trim")


def load(text):
    """The JSON document in fio's output (ValueError when there is none)."""
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON document in fio's output")
    doc, _ = json.JSONDecoder().raw_decode(text[start:])
    return doc


def _direction(s):
    clat = s.get("clat_ns", {})
    pct = clat.get("percentile", {})
    return {"io_bytes": s.get("io_bytes", 0), "bw_bytes": s.get("bw_bytes", 0),
            "iops": round(s.get("iops", 0.0), 1), "runtime_ms": s.get("runtime", 0),
            "total_ios": s.get("total_ios", 0), "short_ios": s.get("short_ios", 0),
            "drop_ios": s.get("drop_ios", 0),
            "clat_ns": {k: pct.get(v) for k, v in PERCENTILES.items()} | {
                "min": clat.get("min"), "max": clat.get("max"),
                "mean": round(clat.get("mean", 0.0))},
            "lat_mean_ns": round(s.get("lat_ns", {}).get("mean", 0.0))}


def summarize(doc):
    """Jobs with their errors and per-direction figures, plus totals per direction."""
    jobs = []
    for j in doc.get("jobs", []):
        row = {"job": j.get("jobname"), "error": j.get("error", 0),
               "total_err": j.get("total_err"), "first_error": j.get("first_error"),
               "runtime_ms": j.get("job_runtime"), "options": j.get("job options", {})}
        for d in DIRECTIONS:
            s = j.get(d) or {}
            if s.get("io_bytes") or s.get("total_ios"):
                row[d] = _direction(s)
        jobs.append(row)
    totals = {}
    for d in ("read", "write"):
        rows = [j[d] for j in jobs if d in j]
        nbytes = sum(r["io_bytes"] for r in rows)
        ms = sum(r["runtime_ms"] for r in rows if r["bw_bytes"])
        timed = sum(r["io_bytes"] for r in rows if r["bw_bytes"])
        totals[d] = {"io_bytes": nbytes, "ios": sum(r["total_ios"] for r in rows),
                     "mb_per_s": round(timed / ms / 1e3, 3) if ms and timed else None}
    return {"fio": doc.get("fio version"), "global": doc.get("global options", {}),
            "jobs": jobs, "totals": totals,
            "disk_util": [{k: d.get(k) for k in ("name", "read_ios", "write_ios", "util")}
                          for d in doc.get("disk_util", [])]}


def job_errors(summary):
    """[(job, errno)] of every job that failed, verify failures included."""
    out = []
    for j in summary["jobs"]:
        err = j["error"] or j.get("first_error") or 0
        if err or (j.get("total_err") or 0) > 0:
            out.append((j["job"], err or EILSEQ))
    return out


def verify_lines(stderr):
    """fio's own words about a verify failure (``crc32c: verify failed at ...``)."""
    keep = ("verify", "Expected CRC", "Received CRC", "bad magic", "bad header")
    return [ln.strip() for ln in stderr.splitlines() if any(k in ln for k in keep)][:8]
