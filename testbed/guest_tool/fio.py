"""fio: run fio against a client namespace with its I/O buffers in a provider's p2pmem.

fio's ``--mem=mmapshared:/sys/bus/pci/devices/BDF/p2pmem/allocate`` makes every job mmap
its buffers from the provider's pool (mmapshared does not ftruncate the file, so sysfs is
fine); ``--buffer host`` runs the same jobs with ``--mem=malloc`` for the ratio.  The
command line is ``fio --filename=DEV --direct=1 --mem=... [ARGS...] --output-format=json``:
ARGS (after ``--``) are fio's own options and job files, given by the host; options before
a job file act as its global section.

While fio runs, ``p2pmem/available`` is sampled: the pool use shows the buffers really came
from p2pmem.  ``--corrupt-offset`` proves verify errors are caught: the jobs run with
``--do_verify=0``, one 4 KiB block of the device at that offset is inverted, and the same
jobs run again with ``--verify_only``.

Never add ``--thread`` with several jobs (fio 3.39 double-frees the shared mmap file name
at exit) nor io_uring ``fixedbufs`` (registration pins without FOLL_PCI_P2PDMA: EFAULT).
"""

import os
import signal
import subprocess
import tempfile
import time

from . import fiojson, schema
from .dio import error_text, host_buffer, open_direct
from .pattern import BLOCK, corrupted
from .sysfs import SYS_PCI, read
from .usage import UsageError

SAMPLE_SECONDS = 0.1


def fio_argv(client, mem, args, output):
    return ["fio", f"--filename={client}", "--direct=1", f"--mem={mem}", *args,
            "--output-format=json", f"--output={output}"]


def available(provider):
    value = read(f"{SYS_PCI}/{provider}/p2pmem/available") if provider else None
    return int(value) if value and value.isdigit() else None


def run_fio(argv, provider, timeout):
    """One fio run: exit status, stderr, the parsed JSON, and the pool's lowest level."""
    out = {"argv": argv}
    low = available(provider)
    start = time.monotonic()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err, start_new_session=True)
        while proc.poll() is None:
            if time.monotonic() - start > timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                out["timed_out"] = True
                break
            now = available(provider)
            if now is not None and (low is None or now < low):
                low = now
            time.sleep(SAMPLE_SECONDS)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    code = proc.returncode
    out.update(exit_status=code if code >= 0 else None,
               signal=-code if code < 0 else None, seconds=round(time.monotonic() - start, 3),
               stderr=stderr[-4000:], verify_lines=fiojson.verify_lines(stderr),
               lowest_available=low)
    output = argv[-1].split("=", 1)[1]
    try:
        with open(output, errors="replace") as f:
            out["summary"] = fiojson.summarize(fiojson.load(f.read()))
    except (OSError, ValueError) as exc:
        out["summary"] = None
        out["parse_error"] = str(exc)
    return out


def corrupt_block(client, offset):
    """Invert one 4 KiB block of the device (O_DIRECT read-modify-write)."""
    fd = open_direct(client)
    buf = host_buffer(BLOCK)
    try:
        os.preadv(fd, [buf], offset)
        buf[:] = corrupted(buf[:])
        os.pwritev(fd, [buf], offset)
    finally:
        buf.close()
        os.close(fd)


def fio(args):
    fio_args = [a for a in args.fio_args if a != "--"] if args.fio_args else []
    if not fio_args:
        raise UsageError("give fio's job options or a job file after --")
    if not os.path.exists(args.client):
        raise UsageError(f"{args.client} does not exist")
    if args.corrupt_offset is not None and args.corrupt_offset % BLOCK:
        raise UsageError(f"--corrupt-offset must be a multiple of {BLOCK}")
    provider = args.provider if args.buffer == "p2pmem" else None
    doc = {"provider": args.provider, "client": args.client, "buffer": args.buffer}
    if args.buffer == "p2pmem":
        if not args.provider:
            raise UsageError("--provider is required with --buffer p2pmem")
        allocate = f"{SYS_PCI}/{args.provider}/p2pmem/allocate"
        if not os.path.exists(allocate):
            doc.update(stage=schema.STAGE_ALLOCATE, error=schema.NO_P2PMEM, errno=None)
            return doc
        mem = f"mmapshared:{allocate}"
    else:
        mem = "malloc"
    before = available(provider)
    phases = []
    with tempfile.TemporaryDirectory(prefix="tb-fio-") as tmp:
        def one(name, extra):
            res = run_fio(fio_argv(args.client, mem, fio_args + extra, f"{tmp}/{name}.json"),
                          provider, args.timeout)
            res["name"] = name
            phases.append(res)
            return res

        if args.corrupt_offset is None:
            one("run", [])
        else:
            first = one("write", ["--do_verify=0"])
            if first.get("exit_status") == 0:
                try:
                    corrupt_block(args.client, args.corrupt_offset)
                    doc["corrupted_offset"] = args.corrupt_offset
                except OSError as exc:
                    doc["corrupt_error"] = error_text(exc)
                one("verify", ["--verify_only"])
    after = available(provider)
    lows = [p["lowest_available"] for p in phases if p.get("lowest_available") is not None]
    doc[schema.P2PMEM] = {"before": before, "lowest": min(lows) if lows else None,
                          "after": after,
                          "peak_used": before - min(lows) if lows and before is not None
                          else None} if provider else None
    doc[schema.PHASES] = phases
    return judge(doc)


def judge(doc):
    """The transfer-document view (see schema): one ``io`` step, whether the verification
    passed (None when the jobs verified nothing), and MB/s per direction."""
    phases = doc[schema.PHASES]
    last = phases[-1]
    io = {"ok": True, "skipped": False, "errno": None, "error": None,
          "seconds": round(sum(p["seconds"] for p in phases), 3), "bytes": 0}
    verify_failed, verified_any = False, False
    for p in phases:
        s = p.get("summary")
        if p.get("timed_out"):
            io.update(ok=False, error=f"fio ({p['name']}) timed out and was killed")
        elif p.get("signal"):
            io.update(ok=False, error=f"fio ({p['name']}) was killed by signal {p['signal']}")
        elif s is None:
            io.update(ok=False, error=f"fio ({p['name']}) gave no JSON (exit status "
                      f"{p.get('exit_status')}): {p['stderr'].strip()[-300:]}")
        if s is None:
            continue
        for job, err in fiojson.job_errors(s):
            if err == fiojson.EILSEQ:
                verify_failed = True
            elif io["ok"]:
                io.update(ok=False, errno=err,
                          error=f"job {job}: {os.strerror(err)} (errno {err})")
        opts = {**s["global"], **{k: v for j in s["jobs"] for k, v in j["options"].items()}}
        if opts.get("verify") not in (None, "0", "none") and opts.get("do_verify") != "0" \
                and s["totals"]["read"]["io_bytes"]:
            verified_any = True
        io["bytes"] += s["totals"]["read"]["io_bytes"] + s["totals"]["write"]["io_bytes"]
    doc["steps"] = {schema.IO: io}
    doc["data_verified"] = False if verify_failed else (True if verified_any else None)
    doc["verify_errors"] = [ln for p in phases for ln in p.get("verify_lines", [])][:8]
    totals = [p["summary"]["totals"] for p in phases if p.get("summary")]
    doc["mb_per_s"] = {d: next((t[d]["mb_per_s"] for t in totals if t[d]["mb_per_s"]), None)
                       for d in ("read", "write")}
    doc["mismatched_blocks"] = []
    doc[schema.JOBS] = (last.get("summary") or {}).get("jobs", [])
    return doc
