"""JUnit XML for CI dashboards: one test case per record, failures for verdict mismatches."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from ..verdicts.record import Record
from .model import RunResult


def case_name(rec: Record) -> str:
    if rec.command:
        return f"exec: {rec.command}"
    pair = "->".join(x for x in (rec.provider, rec.client) if x)
    return f"{rec.name}[{pair}]" if pair else rec.name


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
    for rec in result.workloads:
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
    return ET.tostring(suite, encoding="unicode", xml_declaration=True)
