"""kselftest:vfio, kselftest:iommu, kselftest:hmm and kunit: the kernel's own tests on the
emulated fabric, judged in the same results as the testbed's own workloads.

A ``kselftest:*`` workload builds its suite from the source of the kernel under test
(:mod:`testbed.kernel.selftests`; cached), ships the programs into the guest and runs each
one there, bounded in time, with the device it needs chosen from the topology (an NVMe
with a CMB for the DMA mapping tests, an igb for the userspace-driver test) and handed to
vfio-pci for the run.  Each program is one record whose ``subtests`` keep every KTAP
result with its diagnostics (results.ktap nests them, junit has a case per subtest):

- ``ok``: every subtest passed, skipped or failed as expected;
- ``fail``: a subtest failed (the detail names them); a subtest that failed only because
  the kernel lacks the option it exercises (the iommufd variants without CONFIG_IOMMUFD)
  is a SKIP saying ``unsupported (CONFIG_IOMMUFD is not set)`` instead;
- ``error``: the program crashed, hung (killed at its bound), stopped before its plan's
  end, or the kernel logged an oops/BUG/WARNING meanwhile: the detail names the program
  and the subtest that was running;
- not judged (KTAP SKIP): the kernel lacks what the suite needs (``unsupported (why)``),
  the topology has no device for it, or the program skipped itself wholly.

``kunit`` reads the KUnit suites a kernel ran at boot from debugfs, one record per suite.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, ClassVar

from ..image.buildroot import kernel_build_env
from ..kernel.config import Kconfig
from ..kernel.extmod import ModuleUnsupported, build_module
from ..kernel.selftests import (SUITES, TIMEOUT_FACTOR_ENV, Program, Suite, build_suite,
                                suite_source)
from ..spec.endpoints import kind_of
from ..verdicts.ktap import KtapDocument, KtapResult, parse, subtest_leaves
from ..verdicts.observe import trouble_verdict
from .base import DEFAULT_TIMEOUT, Context, GuestHung, Record, Workload
from .judged import tool_step

GUEST_DIR = "/tmp/p2pdma-kselftests"
CONFIG_CMD = ("zcat /proc/config.gz 2>/dev/null || cat /boot/config-$(uname -r) 2>/dev/null "
              "|| cat /lib/modules/$(uname -r)/build/.config")
SETUP_SECONDS = 120.0  # binding, unbinding and restoring around a program, its dmesg
MAX_LOAD_FACTOR = 4.0  # a busier host than that is not waited for any longer
# subtests that exercise one kernel feature: without it their failure is "unsupported".
# Each rule is a name pattern and what it needs: every group, one option of each.  The VFIO
# selftests run every test in each IOMMU mode: the legacy container /dev/vfio/vfio with
# group files (vfio_type1*), iommufd's compat modes (group files, /dev/iommu), iommufd.
OPTION_VARIANTS: tuple[tuple[re.Pattern[str], tuple[tuple[str, ...], ...]], ...] = (
    (re.compile(r"(^|\.)vfio_type1"),
     (("CONFIG_VFIO_GROUP",), ("CONFIG_VFIO_CONTAINER", "CONFIG_IOMMUFD_VFIO_CONTAINER"))),
    (re.compile(r"iommufd_compat"), (("CONFIG_IOMMUFD",), ("CONFIG_VFIO_GROUP",))),
    (re.compile(r"iommufd"), (("CONFIG_IOMMUFD",),)),
    # hugetlb variants (and iommufd's access_domain_destory, which maps MAP_HUGETLB)
    (re.compile(r"huge|(^|\.)access_domain_destory$"), (("CONFIG_HUGETLBFS",),)),
)
RUN_LINE = re.compile(r"^\s*RUN\s+(\S+)")
MAX_OUTPUT = 20000
MODULE_SECONDS = 120.0  # loading or unloading a test module


def time_factor(accel: str, timeout: float = DEFAULT_TIMEOUT, load: float = 0.0,
                cpus: int = 1) -> float:
    """How much longer than its nominal bound a program may take here.  The nominal
    bounds are measured under TCG on an idle 2-core host; two things make a run slower:

    - the user's ``--timeout`` over its default (who raises it asks for patience with
      every command of a run: the testbed's own knob, scaled the same way here);
    - under TCG, the host's load per core (``load`` = 1-minute load average over ``cpus``):
      a guest's vCPU threads get their share of a busy host (capped at
      :data:`MAX_LOAD_FACTOR`; KVM guests run at native speed).

    >>> time_factor("tcg", load=1.0, cpus=2), time_factor("tcg", load=6.0, cpus=2)
    (1.0, 3.0)
    >>> time_factor("kvm", load=6.0, cpus=2), time_factor("tcg", 240.0, load=20.0, cpus=2)
    (1.0, 8.0)
    """
    factor = max(1.0, timeout / DEFAULT_TIMEOUT)
    if accel == "tcg":
        factor *= min(MAX_LOAD_FACTOR, max(1.0, load / max(1, cpus)))
    return round(factor, 2)


def host_load() -> tuple[float, int]:
    """(1-minute load average, CPUs this process may use)."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    return load, len(os.sched_getaffinity(0))


def bounds(program: Program, factor: float) -> tuple[float, float]:
    """(the program's bound in the guest, the host's bound on the whole guest step): the
    guest kills the program at the first; the host gives up on the guest at the second
    (the program's bound plus the margin for setting up and restoring around it)."""
    inner = round(program.timeout * factor, 1)
    return inner, round(inner + SETUP_SECONDS * factor, 1)


def hung_record(rec: Record, program: Program, inner: float, outer: float) -> Record:
    """The record of a program whose guest did not come back within the host's bound."""
    rec.predicted, rec.observed = "ok", "error"
    rec.detail = (f"{program.name} hung: the guest did not come back within {outer:.0f} s "
                  f"(the program's bound {inner:.0f} s + {outer - inner:.0f} s for setting "
                  "up and restoring); the guest is shut down")
    rec.subtests = []
    return rec


def guest_config(ctx: Context) -> Kconfig | None:
    """The running kernel's configuration, read in the guest."""
    res = ctx.guest.run(CONFIG_CMD, timeout=60)
    config = Kconfig.parse(res.stdout)
    return config if config.is_full else None


def skip_record(name: str, test: str | None, why: str) -> Record:
    return Record(name=name, test=test, detail=why)


def running_subtest(doc: KtapDocument) -> str | None:
    """The subtest a program was in when it stopped: the last ``RUN`` line the harness
    printed that has no result line after it."""
    for line in reversed(doc.diagnostics):
        m = RUN_LINE.match(line)
        if m:
            return m.group(1)
    return None


def reclassify(doc: KtapDocument, config: Kconfig | None) -> list[str]:
    """Failures of subtests that need an option the kernel lacks become SKIPs saying so;
    returns the reasons used."""
    if config is None:
        return []
    used: set[str] = set()

    def visit(t: KtapResult, path: str) -> None:
        for rx, groups in OPTION_VARIANTS:
            if not rx.search(path) or t.status not in ("fail", "error"):
                continue
            unmet = [g for g in groups if not any(config.enabled(o) for o in g)]
            if not unmet:
                continue
            opts = unmet[0]
            why = f"{opts[0]} is not set" if len(opts) == 1 else \
                f"neither {' nor '.join(opts)} is set"
            t.status, t.reason = "skip", f"unsupported ({why})"
            used.add(why)
        for s in t.subtests:
            visit(s, f"{path}.{s.name}")

    for t in doc.tests:
        visit(t, t.name)
    return sorted(used)


def judge_program(program: Program, doc: KtapDocument, result: dict[str, Any],
                  timed_out: bool, excused: bool = False,
                  bound: float | None = None) -> tuple[str | None, str]:
    """(observed verdict or None when it skipped itself wholly, detail).  ``excused``:
    failures were turned into unsupported SKIPs, so a failing exit status is expected;
    ``bound``: the program's bound in the guest (default its nominal one)."""
    name = program.name
    where = running_subtest(doc)
    during = f" while running {where}" if where else ""
    counts = doc.counts()
    total = sum(counts.values())
    if timed_out or result.get("timed_out"):
        return "error", (f"{name} hung: killed after "
                         f"{bound or program.timeout:.0f} s{during}")
    if result.get("signal"):
        return "error", f"{name} crashed (signal {result['signal']}){during}"
    if doc.skip_all is not None:
        return None, f"skipped: {doc.skip_all or 'the program skipped itself'}"
    status = result.get("exit_status")
    if status == 4 and not doc.tests:
        return None, "skipped: " + (" ".join(doc.diagnostics[-2:]) or "exit status 4 (KSFT_SKIP)")
    if doc.bail_out:
        return "error", f"{name} bailed out: {doc.bail_out}"
    if not doc.complete:
        return "error", (f"{name} stopped after {len(doc.tests)} of {doc.plan} tests "
                         f"(exit status {status}){during}" if doc.plan is not None else
                         f"{name} printed no KTAP plan (exit status {status}): "
                         + " | ".join(doc.diagnostics[-3:]))
    broken = [p for t in doc.tests for p, leaf in t.leaves() if leaf.status in ("fail", "error")]
    if broken:
        more = f" (+{len(broken) - 5} more)" if len(broken) > 5 else ""
        return "fail", f"{len(broken)} of {total} failed: {', '.join(broken[:5])}{more}"
    if status not in (0, 4, None) and not excused:
        return "error", f"{name} exited with status {status} although every test passed"
    return "ok", (f"{counts['pass']} passed, {counts['skip']} skipped"
                  + (f", {counts['xfail']} expected failures" if counts["xfail"] else ""))


class KernelSelftest(Workload):
    """One suite of tools/testing/selftests (subclasses set ``suite``)."""

    suite: ClassVar[Suite]
    judged = True

    def run(self, ctx: Context) -> list[Record]:
        config = guest_config(ctx)
        why = self.suite.unsupported(config)
        if why:
            return [skip_record(self.name, None, f"unsupported ({why})")]
        src = suite_source(ctx.kernel)
        built = build_suite(self.suite, src)
        ctx.guest.check(f"rm -rf {GUEST_DIR} && mkdir -p {GUEST_DIR} && tar -x -C {GUEST_DIR}",
                        timeout=120, stdin=built.tar())
        records: list[Record] = []
        load, cpus = host_load()
        factor = time_factor(ctx.guest.accel.name, ctx.timeout, load, cpus)
        hung = False
        try:
            unload = self.load_test_module(ctx, config, src)
            if isinstance(unload, Record):
                return [unload]
            try:
                for program in self.suite.programs:
                    records.append(self.program(ctx, program, config, factor))
            except GuestHung as exc:
                hung = True  # no cleanup on a wedged guest: the run shuts it down
                exc.records[:0] = records
                raise
            finally:
                if unload and not hung:
                    res = ctx.guest.run(unload, timeout=MODULE_SECONDS)
                    if not res.ok:
                        records.append(Record(
                            name=self.name, test=None, predicted="ok", observed="error",
                            detail=f"{unload} failed: {(res.stderr or res.stdout)[-300:]}"))
        finally:
            if not hung:
                ctx.guest.run(f"rm -rf {GUEST_DIR}", timeout=60)
        return records

    def load_test_module(self, ctx: Context, config: Kconfig | None,
                         src: Path) -> str | Record | None:
        """Load the kernel's own test module the suite drives (lib/test_hmm.c): modprobe it
        when the kernel has it, else build it from the source against the kernel under test
        and insmod it.  Returns the command that unloads it, or a record saying why not."""
        if self.suite.test_module is None:
            return None
        option = self.suite.test_module[0]
        module = self.suite.module(src)
        assert module is not None
        if config is not None and config.get(option) == "y":
            return None
        if config is not None and config.get(option) == "m":
            load = f"modprobe {module.name}"
        else:
            release = ctx.guest.inventory.get("kernel", {}).get("release") or "?"
            try:
                ko = build_module(module, kernel_build_env(ctx.kernel, release))
            except ModuleUnsupported as exc:
                return skip_record(self.name, None, f"unsupported ({exc.why})")
            remote = f"{GUEST_DIR}/{module.name}.ko"
            ctx.guest.put(ko, remote)
            load = f"insmod {remote}"
        res = ctx.guest.run(f"rmmod {module.name} 2>/dev/null; {load}", timeout=MODULE_SECONDS)
        if not res.ok:
            return Record(name=self.name, predicted="ok", observed="error",
                          detail=f"{load} failed: {(res.stderr or res.stdout).strip()[-300:]}")
        return f"rmmod {module.name}"

    def device(self, ctx: Context, program: Program) -> tuple[str | None, str | None, str]:
        """(spec name, BDF, why not) of the device ``program`` drives."""
        if program.device is None:
            return None, None, ""
        topo = ctx.topology
        if topo.iommu.model == "none":
            return None, None, ("unsupported (the topology has no IOMMU: VFIO hands out "
                                "IOMMU groups; use a vIOMMU topology)")
        if program.device == "nvme-cmb":  # the largest BAR is the CMB: the MMIO mapping test
            names = [n.name for n in topo.nvmes() if n.cmb] or [n.name for n in topo.nvmes()]
        else:
            names = [e.name for e in topo.endpoints() if kind_of(e).word == program.device]
        for name in names:
            bdf = ctx.guest.names.get(name)
            if bdf:
                return name, bdf, ""
        what = "NVMe" if program.device == "nvme-cmb" else program.device
        return None, None, f"skipped: the topology has no {what} for {program.name}"

    def program(self, ctx: Context, program: Program, config: Kconfig | None,
                factor: float = 1.0) -> Record:
        """Run one program, its bound scaled by ``factor`` (:func:`time_factor`); its record.
        GuestHung when the guest does not come back within the host's bound."""
        why = self.suite.unsupported(config, program)
        if why:
            return skip_record(self.name, program.name, f"unsupported ({why})")
        name, bdf, why = self.device(ctx, program)
        if why:
            return skip_record(self.name, program.name, why)
        inner, outer = bounds(program, factor)
        args = ["kselftest", "--dir", GUEST_DIR, "--program", program.name,
                "--timeout", str(inner)]
        for module in self.suite.modules:
            args += ["--module", module]
        if program.hugepages:
            args += ["--hugepages", str(program.hugepages)]
        for a in program.args:
            args.append(f"--arg={a}")
        if factor > 1.0:  # the harness's own per-test bound, scaled the same way
            args += ["--env", f"{TIMEOUT_FACTOR_ENV}={factor:g}"]
        if bdf:
            args += ["--vfio", bdf, "--arg", bdf]
            if ctx.topology.iommu.model == "virtio":
                args.append("--unsafe-interrupts")  # virtio-iommu remaps no interrupts
        step = tool_step(ctx, args, timeout=outer)
        data = step.data or {}
        rec = Record(name=self.name, test=program.name, client=name, predicted="ok",
                     seconds=round(step.result.seconds, 3), dmesg=step.dmesg)
        rec.data = {"bound": inner, "host_bound": outer, "time_factor": factor}
        if step.result.timed_out:
            raise GuestHung(f"{self.name}: {hung_record(rec, program, inner, outer).detail}",
                            [rec])
        if data.get("stage") == "bind":
            rec.predicted, rec.detail = None, f"skipped: {bdf} could not go to vfio-pci: " \
                f"{data.get('error')}"
            rec.data.update({k: v for k, v in data.items() if k != "output"})
            return rec
        doc = parse(str(data.get("output", "")))
        unsupported = reclassify(doc, config)
        observed, detail = judge_program(program, doc, data, step.result.timed_out,
                                         excused=bool(unsupported), bound=inner)
        trouble = trouble_verdict(step.delta)
        if trouble:
            observed, detail = "error", f"{program.name}: {trouble[1]}"
        if observed is None:
            rec.predicted = None
        if unsupported:
            detail += "; unsupported here: " + "; ".join(unsupported)
        rec.observed, rec.detail = observed, detail
        rec.subtests = [t.to_json() for t in doc.tests]
        rec.data.update({k: v for k, v in data.items() if k != "output"})
        rec.data["output_tail"] = str(data.get("output", ""))[-MAX_OUTPUT:]
        rec.data["counts"] = doc.counts()
        return rec


class KselftestVfio(KernelSelftest):
    suite = SUITES["vfio"]
    name = suite.workload


class KselftestIommu(KernelSelftest):
    suite = SUITES["iommu"]
    name = suite.workload


class KselftestHmm(KernelSelftest):
    suite = SUITES["hmm"]
    name = suite.workload


SELFTEST_WORKLOADS: tuple[type[KernelSelftest], ...] = (KselftestVfio, KselftestIommu,
                                                         KselftestHmm)


def kunit_off(config: Kconfig | None, cmdline: str) -> str | None:
    """Why the kernel ran no KUnit suite at boot: ``kunit.enable`` (the command line's
    last word for it, else CONFIG_KUNIT_DEFAULT_ENABLED) is off; None when it is on or
    unknown."""
    for param, option in (("enable", "CONFIG_KUNIT_DEFAULT_ENABLED"),
                          ("autorun", "CONFIG_KUNIT_AUTORUN_ENABLED")):
        words = [w.split("=", 1)[1] for w in cmdline.split()
                 if w.startswith(f"kunit.{param}=")]
        if words:
            if words[-1].lower() not in ("1", "y", "yes", "on", "true"):
                return f"the kernel was booted with kunit.{param}={words[-1]}"
        elif config is not None and config.get(option) == "n":
            return (f"{option} is not set: KUnit runs its suites only on a boot with "
                    f"kunit.{param}=1 (add it to the topology's kernel_cmdline)")
    return None


def kunit_record(name: str, suite: str, text: str) -> Record:
    """One KUnit suite's results (its debugfs ``results`` file) as a judged record."""
    doc = parse(text)
    tests = doc.tests[0].subtests if len(doc.tests) == 1 and doc.tests[0].subtests \
        else doc.tests
    rec = Record(name=name, test=suite, predicted="ok", subtests=[t.to_json() for t in tests])
    leaves = subtest_leaves(rec.subtests)
    broken = [p for p, t in leaves if t.get("status") in ("fail", "error")]
    if doc.skip_all is not None or (len(doc.tests) == 1 and doc.tests[0].status == "skip"):
        rec.predicted = None
        rec.detail = f"skipped: {doc.tests[0].reason if doc.tests else doc.skip_all}"
    elif broken:
        more = f" (+{len(broken) - 5} more)" if len(broken) > 5 else ""
        rec.observed, rec.detail = "fail", f"{len(broken)} of {len(leaves)} failed: " \
            + ", ".join(broken[:5]) + more
    elif not doc.tests:
        rec.observed, rec.detail = "error", f"the suite {suite} reported nothing"
    elif len(doc.tests) == 1 and not doc.tests[0].subtests:
        # debugfs prints the suite's own "ok" line even for a suite that never ran (its
        # status starts as success): no case line means no case ran
        rec.observed, rec.detail = "error", (f"the suite {suite} ran no test case (its "
                                             "debugfs results hold no case line)")
    else:
        skipped = sum(1 for _, t in leaves if t.get("status") == "skip")
        rec.observed, rec.detail = "ok", f"{len(leaves) - skipped} passed, {skipped} skipped"
    return rec


class Kunit(Workload):
    """The KUnit suites built into the kernel under test, as they ran at boot (debugfs)."""

    name = "kunit"
    judged = True

    def run(self, ctx: Context) -> list[Record]:
        config = guest_config(ctx)
        for opt in ("CONFIG_KUNIT", "CONFIG_KUNIT_DEBUGFS"):
            if config is not None and not config.enabled(opt):
                return [skip_record(self.name, None, f"unsupported ({opt} is not set)")]
        off = kunit_off(config, ctx.guest.run("cat /proc/cmdline", timeout=30).stdout)
        if off:
            return [skip_record(self.name, None, f"unsupported ({off})")]
        data, res = ctx.tool(["kunit"], timeout=120)
        if not data or data.get("stage"):
            why = (data or {}).get("error") or res.describe()[:300]
            return [skip_record(self.name, None, f"unsupported ({why})")]
        records = [kunit_record(self.name, suite, text)
                   for suite, text in sorted((data.get("suites") or {}).items())]
        return records or [skip_record(self.name, None, "no KUnit suite ran in this kernel")]
