"""JUnit XML for CI dashboards: one test case per record, failures for verdict mismatches."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from ..verdicts.ktap import subtest_leaves
from ..verdicts.record import Record
from .model import RunResult


def case_name(rec: Record) -> str:
    if rec.command:
        return f"exec: {rec.command}"
    pair = "->".join(x for x in (rec.provider, rec.client) if x)
    return f"{rec.name}[{pair}]" if pair else rec.name


def kernel_test_cases(suite: ET.Element, topology: str, rec: Record) -> int:
    """A kernel test program's (or KUnit suite's) subtests, one test case each: a failure,
    an error or a skip with its reason and diagnostics; the program's own crash or hang an
    error case of its own.  Returns the number of cases."""
    classname = f"{topology}.{rec.name}.{rec.test}"
    cases = 0
    for path, t in subtest_leaves(rec.subtests):
        case = ET.SubElement(suite, "testcase", classname=classname, name=path)
        text = "\n".join(str(x) for x in t.get("diagnostics") or [])
        status, reason = t.get("status"), str(t.get("reason", ""))
        if status in ("fail", "error"):
            tag = "failure" if status == "fail" else "error"
            ET.SubElement(case, tag, message=(reason or status)[:200]).text = text
        elif status == "skip":
            ET.SubElement(case, "skipped", message=reason[:200])
        cases += 1
    if not rec.judged and not rec.subtests:
        case = ET.SubElement(suite, "testcase", classname=classname, name=rec.test or rec.name)
        ET.SubElement(case, "skipped", message=rec.detail[:200])
        cases += 1
    elif rec.observed == "error" or (rec.judged and not rec.passed and not any(
            t.get("status") in ("fail", "error") for _, t in subtest_leaves(rec.subtests))):
        case = ET.SubElement(suite, "testcase", classname=classname, name=rec.test or rec.name,
                             time=f"{rec.seconds:.2f}")
        ET.SubElement(case, "error", message=rec.detail.splitlines()[0][:200] if rec.detail
                      else "error").text = rec.detail
        cases += 1
    return cases


def to_junit(result: RunResult) -> str:
    broken = bool(result.error) or not result.finished
    suite = ET.Element("testsuite", name=f"p2pdma-testbed.{result.topology}",
                       tests=str(len(result.workloads) + (1 if broken else 0)),
                       failures=str(len(result.mismatches)),
                       errors="1" if broken else "0", time=f"{result.seconds:.2f}")
    if broken:
        message = result.error or "the run did not finish"
        case = ET.SubElement(suite, "testcase", classname=result.topology,
                             name="boot" if result.error_kind.startswith(("boot", "driver",
                                                                          "guest-view"))
                             else "run")
        ET.SubElement(case, "error", message=message.splitlines()[0][:200],
                      type=result.error_kind or "incomplete").text = message
    kernel_tests = False
    for rec in result.workloads:
        if rec.test is not None:
            kernel_test_cases(suite, result.topology, rec)
            kernel_tests = True
            continue
        case = ET.SubElement(suite, "testcase", classname=result.topology, name=case_name(rec),
                             time=f"{rec.seconds:.2f}")
        if rec.judged and not rec.passed:
            f = ET.SubElement(case, "failure",
                              message=rec.mismatch)
            f.text = f"reason: {rec.reason}\nobserved: {rec.detail}\n" + (
                f"mechanism: {rec.mechanism}\n" if rec.mechanism else "") + "\n".join(
                line for lines in rec.dmesg.values() for line in lines)
        elif rec.command is not None and rec.exit_status != 0:
            case.set("exit_status", str(rec.exit_status))
        if rec.finding:  # a problem that holds whether or not the verdict was predicted
            props = ET.Element("properties")
            ET.SubElement(props, "property", name="finding", value=rec.finding)
            case.insert(0, props)  # before any failure, as pytest writes them
        out = ET.SubElement(case, "system-out")
        out.text = (rec.detail or "") + (f"\nFINDING: {rec.finding}" if rec.finding else "") \
            + ("\n" + rec.stdout if rec.stdout else "")
    if kernel_tests:  # kernel tests: one case per subtest, so count what was written
        cases = suite.findall("testcase")
        suite.set("tests", str(len(cases)))
        suite.set("failures", str(sum(1 for c in cases if c.find("failure") is not None)))
        suite.set("errors", str(sum(1 for c in cases if c.find("error") is not None)))
        suite.set("skipped", str(sum(1 for c in cases if c.find("skipped") is not None)))
    return ET.tostring(suite, encoding="unicode", xml_declaration=True)
