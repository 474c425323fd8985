"""testbed bisect without a guest: the exit status of every kind of outcome, the baseline
comparison, and input that stops the bisection (128, never 1 or 2) before anything runs.
The real-guest exit codes are in tests/integration/test_bisect.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testbed import cli
from testbed.coverage.model import EXECUTED, LINE, NOT_EXECUTED
from testbed.coverage.patch import ChangedLine, PatchCoverage
from testbed.errors import UsageError
from testbed.kernel.build import BUILD_PACKAGES
from testbed.paths import project_root
from testbed.results.baseline import Baseline, Expected, differences, load_baseline
from testbed.results.model import RunResult
from testbed.run.bisect import ABORT, BAD, GOOD, SKIP, judge
from testbed.verdicts.record import Record


def rec(provider="nvme0", client="nvme1", observed="ok", predicted="ok", map_type=None,
        predicted_map_type=None) -> Record:
    return Record("p2p-copy", provider, client, predicted=predicted, observed=observed,
                  observed_map_type=map_type, predicted_map_type=predicted_map_type)


def finished(*records: Record) -> RunResult:
    return RunResult("switch-cmb", finished=True, workloads=list(records))


@pytest.mark.parametrize("kind, status", [
    ("kernel-build", SKIP), ("boot-failed", SKIP), ("boot-timeout", SKIP),
    ("driver-probe-failed", BAD), ("guest-view", BAD), ("guest", BAD), ("workload", BAD),
    ("image", ABORT), ("qemu", ABORT), ("usage", ABORT),
])
def test_errors_map_to_statuses(kind, status):
    assert judge(RunResult("switch-cmb", error=f"{kind}: x", error_kind=kind), None).status \
        == status


def test_oracle_verdict_and_mechanism():
    assert judge(finished(rec(), rec("nvme1", "nvme0")), None).status == GOOD
    assert judge(finished(rec(observed="rejected")), None).status == BAD
    wrong = rec(map_type="bus-address", predicted_map_type="host-bridge")
    step = judge(finished(wrong), None)
    assert step.status == BAD and "mechanism" in step.differences[0]
    assert judge(RunResult("switch-cmb", workloads=[rec()]), None).status == BAD  # unfinished


def test_baseline_beats_the_oracle():
    base = Baseline(Path("b.json"), "switch-cmb", "7.3.4",
                    {("p2p-copy", "nvme0", "nvme1"): Expected("rejected", None)})
    # the oracle says ok and the kernel did ok, but the good kernel rejected: bad
    assert differences(finished(rec()), base) == [
        "p2p-copy nvme0->nvme1: baseline rejected, now ok"]
    # a wrong oracle does not matter when the baseline agrees
    assert judge(finished(rec(observed="rejected")), base).status == GOOD


def test_baseline_mechanism_and_missing_pairs():
    base = Baseline(Path("b.json"), "switch-cmb", "7.3.4", {
        ("p2p-copy", "nvme0", "nvme1"): Expected("ok", "bus-address"),
        ("p2p-copy", "nvme1", "nvme0"): Expected("ok", "bus-address")})
    now = finished(rec(map_type="host-bridge"))
    assert differences(now, base) == [
        "p2p-copy nvme0->nvme1: mechanism: baseline bus-address, now host-bridge",
        "p2p-copy nvme1->nvme0: baseline ok, now missing"]
    # a kernel that could not observe the mechanism is judged on the verdict alone
    assert differences(finished(rec(), rec("nvme1", "nvme0")), base) == []


def test_records_outside_the_baseline_meet_the_oracle():
    base = Baseline(Path("b.json"), "switch-cmb", "7.3.4",
                    {("p2p-copy", "nvme0", "nvme1"): Expected("ok")})
    diffs = differences(finished(rec(), rec("nvme1", "nvme0", observed="rejected")), base)
    assert diffs == ["p2p-copy nvme1->nvme0: predicted ok, observed rejected (not in the "
                     "baseline: judged by the oracle)"]


def test_load_baseline(tmp_path):
    result = finished(rec(map_type="bus-address"),
                      Record("host-baseline", "nvme0", "nvme1", data_verified=True))
    result.kernel = {"release": "7.3.4"}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(result.to_json()))
    base = load_baseline(path)
    assert base.topology == "switch-cmb" and base.kernel == "7.3.4"
    assert base.records == {("p2p-copy", "nvme0", "nvme1"): Expected("ok", "bus-address")}
    assert base.restricted(["passthru"]).records == {}
    assert base.restricted(["p2p-copy"], [("nvme1", "nvme0")]).records == {}
    for text, words in [("{", "not JSON"), ("[]", "not a testbed results.json"),
                        (json.dumps({"topology": "t", "workloads": [], "error": "boom"}),
                         "no judged record (that run failed: boom)")]:
        path.write_text(text)
        with pytest.raises(UsageError, match=words.replace("(", r"\(").replace(")", r"\)")):
            load_baseline(path)
    with pytest.raises(UsageError, match="cannot read"):
        load_baseline(tmp_path / "missing.json")


def patched(*states: str, minimum: float | None = 80, problem: str = "") -> RunResult:
    """A finished, verdict-clean run whose patch's changed lines ran as ``states`` say."""
    lines = [ChangedLine("drivers/pci/p2pdma.c", 700 + i, state, "calc_map_type_and_dist",
                         ["p2p-copy"] if state == EXECUTED else [])
             for i, state in enumerate(states)]
    result = finished(rec())
    result.patch_coverage = PatchCoverage("fix.patch", LINE, lines, problem=problem,
                                          minimum=minimum)
    return result


def test_patch_coverage_below_the_minimum_marks_the_commit_bad():
    """`testbed bisect --patch-coverage P --min-patch-coverage N`: verdicts as the oracle
    says but too few changed lines executed is bad (1), so `git bisect run` finds the commit
    whose workloads stopped reaching the patch; at or above N it is good (0)."""
    low = judge(patched(EXECUTED, NOT_EXECUTED), None)
    assert low.status == BAD, low
    assert "patch coverage 50% is below --min-patch-coverage 80" in low.reason
    assert low.differences[0].startswith("1 of 2 changed lines (50%); not executed: "
                                         "drivers/pci/p2pdma.c:701 (calc_map_type_and_dist())")
    assert judge(patched(EXECUTED, EXECUTED), None).status == GOOD
    assert judge(patched(EXECUTED, NOT_EXECUTED, minimum=50), None).status == GOOD
    # no minimum: patch coverage is reported, never judged
    assert judge(patched(NOT_EXECUTED, minimum=None), None).status == GOOD
    # nothing measurable, or a kernel without the patch's lines, is below any minimum
    assert judge(patched("not-code"), None).status == BAD
    gone = judge(patched(EXECUTED, problem="drivers/pci/p2pdma.c:700 is not the patch's "
                                           "line"), None)
    assert gone.status == BAD and "not the patch's line" in gone.reason
    # a verdict that differs is reported first, patch coverage or not
    wrong = patched(EXECUTED, EXECUTED)
    wrong.workloads = [rec(observed="rejected")]
    assert "differ from the oracle" in judge(wrong, None).reason


# -- the command: bad input stops the bisection, before anything is built or booted --------

def _status(argv, capsys) -> tuple[int, str]:
    try:
        status = cli.main(argv)
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return status, out.out + out.err


@pytest.mark.parametrize("argv, words", [
    (["bisect"], "required: topology"),
    (["bisect", "switch-cmb", "--bogus"], "unrecognized arguments: --bogus"),
    (["bisect", "switch-cmb", "--jobs", "x"], "--jobs"),
    (["bisect", "no-such-topology", "--kernel", "default"], "no-such-topology"),
    (["bisect", "switch-cmb", "--kernel", "default", "-w", "nope"], "--workload 'nope'"),
    (["bisect", "switch-cmb", "--kernel", "default", "-w", "host-baseline"], "is judged"),
    (["bisect", "switch-cmb", "--kernel", "default", "--source", "."], "without --source"),
    (["bisect", "switch-cmb", "--kernel", "/no/such/kernel"], "--kernel /no/such/kernel"),
    (["bisect", "switch-cmb", "--source", "/"], "not a Linux source tree"),
    (["bisect", "switch-cmb", "--kernel", "default", "--baseline", "/no/such.json"],
     "--baseline /no/such.json: cannot read"),
    (["bisect", "switch-cmb", "--kernel", "default", "--min-patch-coverage", "80"],
     "give the patch with --patch-coverage"),
    (["bisect", "switch-cmb", "--kernel", "default", "--patch-coverage", "/no/such.patch"],
     "--patch-coverage /no/such.patch: neither a patch file nor a git range"),
    (["bisect", "switch-cmb", "--kernel", "default", "--patch-coverage", "/no/such.patch",
      "--min-patch-coverage", "120"], "a percentage from 0 to 100, got '120'"),
])
def test_bad_input_aborts_the_bisection(argv, words, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TESTBED_STATE", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    status, out = _status(argv, capsys)
    assert status == ABORT, out
    assert words in out, out
    assert not (tmp_path / "state").exists() and not (tmp_path / "runs").exists()


def test_baseline_of_another_topology_aborts(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TESTBED_STATE", str(tmp_path / "state"))
    path = tmp_path / "results.json"
    path.write_text(json.dumps(RunResult("rootports-cmb", finished=True,
                                         workloads=[rec()]).to_json()))
    status, out = _status(["bisect", "switch-cmb", "--kernel", "default", "--baseline",
                           str(path)], capsys)
    assert status == ABORT and "a run of topology 'rootports-cmb', not 'switch-cmb'" in out


def test_other_commands_keep_exit_2(capsys):
    assert _status(["run", "switch-cmb", "--bogus"], capsys)[0] == 2
    assert _status(["boot", "--bogus"], capsys)[0] == 2


def test_setup_host_installs_what_bisect_and_gdb_need():
    """CI installs everything from scripts/setup-host.sh (`setup-host.sh test`, the PKGS
    lines of its test branch too): the kernel build tools (the bisect test builds a tree
    make rejects) and gdb (the --gdb test attaches it)."""
    script = (project_root() / "scripts" / "setup-host.sh").read_text()
    words = set(" ".join(line for line in script.splitlines()
                         if line.strip().startswith("PKGS=")).replace('"', " ").split())
    assert set(BUILD_PACKAGES.split()) | {"gdb"} <= words
