"""fio: fio's I/O engines, patterns, block sizes and queue depths with their buffers in a
provider's p2pmem (``--mem=mmapshared:.../p2pmem/allocate``), verification on.

For every pair the jobs run against the client's namespace with the provider's p2pmem as
the buffers, then (once per client) with host memory, for the ratio.  The default jobs are
small and cover psync, libaio and io_uring, sequential and random, 4K to 1M, queue depths 1
to 8 and two jobs at once, each verified (crc32c or md5).  ``--fio-arg`` replaces them:
``bs=4k`` is fio's ``--bs=4k``, a value starting with ``-`` goes as it is, anything else is a
job file in the guest (``--push ./my.fio:/root/my.fio --fio-arg /root/my.fio``).  Options
given that way run after ``--verify=crc32c --rw=write --size=1M --bs=64k --ioengine=libaio
--iodepth=4``, so they override them; with no ``--name`` and no job file they form one job.

Judged per pair: fio's JSON per job (errno 84 is a verify failure: data corruption),
the kernel's refusal and IOMMU lines, kernel trouble in dmesg.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..guest_tool import schema
from .base import Context, Record, PairWorkload, need_bdf
from .judged import judge, pair_targets, tool_step

DEFAULT_JOBS: tuple[tuple[str, ...], ...] = (
    # one region of the client each, so a later job never overwrites an earlier one's
    ("--name=psync-seq-4k", "--ioengine=psync", "--rw=write", "--bs=4k", "--offset=0",
     "--size=256k"),
    ("--name=libaio-rand-64k-qd8", "--stonewall", "--ioengine=libaio", "--rw=randwrite",
     "--bs=64k", "--iodepth=8", "--offset=1M", "--size=1M", "--verify=md5"),
    ("--name=io_uring-seq-1m-qd2", "--stonewall", "--ioengine=io_uring", "--rw=write",
     "--bs=1M", "--iodepth=2", "--offset=2M", "--size=2M"),
    ("--name=io_uring-rand-16k-qd4-2jobs", "--stonewall", "--ioengine=io_uring",
     "--rw=randwrite", "--bs=16k", "--iodepth=4", "--numjobs=2", "--offset=4M",
     "--offset_increment=1M", "--size=512k"),
)
DEFAULT_GLOBALS = ("--verify=crc32c",)
USER_BASE = ("--verify=crc32c", "--rw=write", "--size=1M", "--bs=64k", "--ioengine=libaio",
             "--iodepth=4")
CORRUPT_OFFSET = 64 << 10  # inside the first job's region for every default job


def normalize(arg: str) -> str:
    """``bs=4k`` -> ``--bs=4k``; ``--bs=4k`` and a job file path stay as they are.

    >>> [normalize(a) for a in ("bs=4k", "--iodepth=8", "/root/my.fio")]
    ['--bs=4k', '--iodepth=8', '/root/my.fio']
    """
    if arg.startswith("-") or "=" not in arg:
        return arg
    return "--" + arg


def fio_args(user: Sequence[str]) -> list[str]:
    """The fio arguments of one run: the default jobs, or the user's on top of a base."""
    if not user:
        return [*DEFAULT_GLOBALS, *(a for job in DEFAULT_JOBS for a in job)]
    args = [normalize(a) for a in user]
    has_job = any(a.startswith("--name=") or not a.startswith("-") for a in args)
    return [*USER_BASE, *args, *([] if has_job else ["--name=user"])]


class Fio(PairWorkload):
    name = "fio"
    judged = True
    insists = True

    def run(self, ctx: Context) -> list[Record]:
        args = fio_args(ctx.fio_args)
        host_runs: dict[str, dict[str, Any] | None] = {}
        records: list[Record] = []
        for rec, provider, dev in pair_targets(ctx, self.name, records):
            extra = ["--corrupt-offset", str(CORRUPT_OFFSET)] if "corrupt" in ctx.inject else []
            tool = ["fio", "--provider", need_bdf(ctx, provider), "--client", dev,
                    "--timeout", str(max(10.0, ctx.timeout - 10)), *extra, "--", *args]
            step = tool_step(ctx, tool)
            judge(ctx, rec, step.data, step)
            if dev not in host_runs:
                host_runs[dev] = self.host_run(ctx, dev, args)
            self.explain(rec, step.data, host_runs[dev])
            records.append(rec)
        return records

    def host_run(self, ctx: Context, dev: str, args: list[str]) -> dict[str, Any] | None:
        data, _ = ctx.tool(["fio", "--buffer", "host", "--client", dev,
                            "--timeout", str(max(10.0, ctx.timeout - 10)), "--", *args])
        return data

    @staticmethod
    def explain(rec: Record, data: dict[str, Any] | None, host: dict[str, Any] | None) -> None:
        """fio's own words in the detail; the host-memory run and the ratio in the data."""
        if not data:
            return
        pool = data.get(schema.P2PMEM) or {}
        if data.get("data_verified") is False and rec.observed == "error" and \
                not rec.detail.startswith("the kernel logged"):
            lines = data.get("verify_errors") or ["(fio printed no verify line)"]
            rec.detail = f"fio verify failed (errno 84): {'; '.join(lines[:3])}"
        elif rec.observed == "ok":
            jobs = data.get(schema.JOBS, [])
            rec.detail = (f"{len(jobs)} fio job(s) completed; "
                          + ("every block written was read back and verified"
                             if data.get("data_verified") else
                             "no verification requested (no verify= in the job)")
                          + (f"; up to {pool['peak_used']} bytes of the provider's p2pmem "
                             f"held fio's buffers" if pool.get("peak_used") else
                             "; the provider's p2pmem use was never seen (did a --mem option "
                             "replace the p2pmem buffers?)"))
        host_rates = (host or {}).get("mb_per_s") or {}
        p2p_rates = data.get("mb_per_s") or {}
        rec.data["host"] = {"mb_per_s": host_rates,
                            "data_verified": (host or {}).get("data_verified"),
                            "jobs": (host or {}).get(schema.JOBS, [])}
        rec.data["host_over_p2p"] = {
            d: round(host_rates[d] / p2p_rates[d], 2) for d in ("read", "write")
            if host_rates.get(d) and p2p_rates.get(d)}
