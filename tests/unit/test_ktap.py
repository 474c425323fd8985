"""KTAP output (Documentation/dev-tools/ktap.rst, version 1) of runs and matrices, on
synthetic results (no QEMU)."""

from __future__ import annotations

from pathlib import Path

from testbed import cli
from testbed.results.ktap import KtapTest, description, render, to_ktap
from testbed.results.model import RunResult
from testbed.run.cells import Matrix, add_run
from testbed.run.ktap import matrix_ktap
from testbed.verdicts.record import Record


def sample(**kw) -> RunResult:
    r = RunResult(topology="switch-cmb", kernel={"release": "7.3.4"}, finished=True, workloads=[
        Record("inventory"),
        Record("p2p-copy", "nvme0", "nvme1", "ok", "shared switch", "ok", True, 40.0,
               predicted_map_type="bus-address", observed_map_type="bus-address"),
        Record("p2p-copy", "nvme1", "nvme0", "ok", "shared switch", "error", False,
               detail="data corruption", dmesg={"nvme": ["nvme nvme0: I/O error"]},
               predicted_map_type="bus-address"),
        Record("host-baseline", "nvme0", "nvme1", data_verified=True, mb_per_s=300.0),
        Record("exec", command="echo a # b", exit_status=3, stdout="a\n"),
    ])
    for k, v in kw.items():
        setattr(r, k, v)
    return r


def test_a_run_as_ktap():
    assert to_ktap(sample()) == """\
KTAP version 1
1..4
# p2pdma-testbed run switch-cmb: kernel 7.3.4, status fail
  KTAP version 1
  1..1
  ok 1 inventory # SKIP not judged: the guest's view of the topology
ok 1 inventory # SKIP nothing judged
  KTAP version 1
  1..2
  # predicted ok, observed ok; mechanism bus-address
  # data verified
  ok 1 nvme0->nvme1
  # predicted ok, observed error; mechanism bus-address (unobserved)
  # reason: shared switch
  # observed: data corruption
  # dmesg nvme: nvme nvme0: I/O error
  # data NOT verified
  not ok 2 nvme1->nvme0 # predicted ok, observed error
not ok 2 p2p-copy # 1 of 2 failed
  KTAP version 1
  1..1
  ok 1 nvme0->nvme1 # SKIP not judged: informational (300.0 MB/s)
ok 3 host-baseline # SKIP nothing judged
  KTAP version 1
  1..1
  ok 1 exec: echo a %23 b # SKIP not judged: exit status 3
ok 4 exec # SKIP nothing judged
"""


def test_a_broken_run_ends_in_an_error_test():
    text = to_ktap(sample(workloads=[], finished=False, error="switch-cmb: no SSH in 60 s\n"
                                                                "console tail ...",
                          error_kind="boot-timeout"))
    assert text.splitlines() == [
        "KTAP version 1", "1..1",
        "# p2pdma-testbed run switch-cmb: kernel 7.3.4, status fail",
        "not ok 1 boot # ERROR switch-cmb: no SSH in 60 s"]
    cut = to_ktap(sample(finished=False))  # interrupted, no error: never all ok
    assert cut.splitlines()[1] == "1..5"
    assert cut.splitlines()[-1] == "not ok 5 run # ERROR the run did not finish"


def test_results_bubble_up_and_descriptions_hold_no_hash():
    parent = KtapTest("w", subtests=[KtapTest("a", directive="SKIP", reason="x"),
                                     KtapTest("b")])
    assert render([parent]).splitlines()[-1] == "ok 1 w"
    parent.subtests[1].ok = False
    assert render([parent]).splitlines()[-1] == "not ok 1 w # 1 of 2 failed"
    assert description("a#b\n c") == "a%23b c" and description(" ") == "unnamed"
    # every line of a nested document is indented by two spaces per level
    lines = render([KtapTest("t", subtests=[KtapTest("u", subtests=[KtapTest("v")])])])
    assert lines.splitlines() == ["KTAP version 1", "1..1", "  KTAP version 1", "  1..1",
                                  "    KTAP version 1", "    1..1", "    ok 1 v", "  ok 1 u",
                                  "ok 1 t"]


def test_the_ktap_result_agrees_with_the_run_status():
    ok = sample(workloads=[Record("p2p-copy", "nvme0", "nvme1", "ok", observed="ok")])
    assert ok.verdict == "pass"
    assert "not ok" not in to_ktap(ok)
    assert "not ok" in to_ktap(sample())


def _matrix() -> Matrix:
    m = Matrix(kernels=[{"label": k, "spec": k, "description": k, "release": None,
                         "p2pdma": None} for k in ("base", "new")],
               topologies=["switch-cmb", "rootports-cmb"])
    good = Record("p2p-copy", "nvme0", "nvme1", "ok", observed="ok", data_verified=True)
    bad = Record("p2p-copy", "nvme0", "nvme1", "ok", observed="rejected")
    add_run(m, "switch-cmb", "base", sample(workloads=[good]), "switch-cmb/base")
    add_run(m, "switch-cmb", "new", sample(workloads=[bad]), "switch-cmb/new")
    add_run(m, "rootports-cmb", "new", sample(workloads=[], error="boot failed: panic",
                                               error_kind="boot-failed"), "rootports-cmb/new")
    return m


def test_a_matrix_as_ktap():
    lines = matrix_ktap(_matrix()).splitlines()
    assert lines[:3] == ["KTAP version 1", "1..4",
                         "# p2pdma-testbed matrix: baseline base, status FAIL"]
    results = [line for line in lines if not line.startswith((" ", "#", "KTAP", "1.."))]
    assert results == ["ok 1 switch-cmb base",
                       "not ok 2 switch-cmb new # 1 of 1 failed",
                       "not ok 3 rootports-cmb new # 1 of 1 failed",
                       "not ok 4 no regression against base # 1 regression(s), 0 mechanism "
                       "regression(s), 1 incomplete run(s)"]
    assert "    not ok 1 nvme0->nvme1 # predicted ok, observed rejected" in lines
    assert "  not ok 1 boot # ERROR boot failed: panic" in lines
    assert any(line.startswith("# regression: switch-cmb p2p-copy nvme0 -> nvme1: base ok, "
                               "new rejected") for line in lines)


def test_write_matrix_and_results_write_ktap(tmp_path):
    from testbed.results.writer import write_results
    from testbed.run.render import write_matrix
    write_matrix(_matrix(), tmp_path)
    assert (tmp_path / "results.ktap").read_text() == matrix_ktap(_matrix())
    run = tmp_path / "run"
    run.mkdir()
    write_results(run, sample())
    assert (run / "results.ktap").read_text() == to_ktap(sample())


def test_run_format_ktap_prints_only_ktap(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("TESTBED_STATE", str(tmp_path / "state"))
    monkeypatch.setattr("testbed.commands.run.run_topology",
                        lambda topo, opts: (sample(), Path(tmp_path)))
    status = cli.main(["run", "switch-cmb", "--format", "ktap", "-q"])
    out = capsys.readouterr().out
    assert status == 1 and out == to_ktap(sample())
    status = cli.main(["run", "switch-cmb", "-q"])
    assert "MISMATCH" in capsys.readouterr().out  # the table stays the default
