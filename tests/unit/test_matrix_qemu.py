"""QEMU as a matrix axis on synthetic results (pure: no QEMU runs; the plan's QEMUs are
made up, the runs are stand-ins with run_topology's signature)."""

from __future__ import annotations

import json
from types import SimpleNamespace

from testbed.qemu.binary import Qemu
from testbed.results.model import RunResult
from testbed.run.cells import Matrix
from testbed.run.matrix import run_matrix
from testbed.run.merge import merge
from testbed.run.plan import KernelEntry, MatrixPlan, QemuEntry
from testbed.run.render import render_html, render_md, summary
from testbed.run.ktap import matrix_ktap
from testbed.run.shard import boots, partition, plan_id, plan_json
from testbed.spec import load_topology
from testbed.verdicts.record import Record

NAMES = ("switch-cmb", "rootports-cmb-zen")


def plan(qemus=("host", "11.1"), kernels=("default",), tolerance=0.5):
    topos = [load_topology(n) for n in NAMES]
    entries = [QemuEntry(q, q, Qemu(q, f"/opt/{q}/qemu-system-x86_64"),
                         "10.0.2" if q == "host" else "11.1.3") for q in qemus]
    return MatrixPlan(topos, [KernelEntry(k, k, None if k == "default" else SimpleNamespace(
        identity=lambda k=k: k), k) for k in kernels], ("p2p-copy",), qemus=entries,
        mbps_tolerance=tolerance, on_qemu={(t.name, q.label): t for t in topos for q in entries})


def runner(behaviour):
    """A run_topology stand-in: ``behaviour(topology, qemu dir)`` -> (verdict, map type,
    MB/s) or an exception text for a run that broke."""
    def run(topo, opts):
        opts.out.mkdir(parents=True)
        qemu = opts.out.name  # <topology>/<kernel>/<qemu>
        got = behaviour(topo.name, qemu)
        r = RunResult(topology=topo.name, kernel={"release": "7.3.4", "p2pdma": True},
                      qemu={"version": "11.1.3" if qemu == "11.1" else "10.0.2"})
        if isinstance(got, str):
            r.error, r.error_kind = got, "boot-timeout"
        else:
            verdict, mech, mbps = got
            r.finished = True
            r.workloads = [Record("p2p-copy", "nvme0", "nvme1", "ok", "why", verdict,
                                  verdict == "ok", mbps, predicted_map_type="bus-address",
                                  observed_map_type=mech)]
        (opts.out / "results.json").write_text(json.dumps(r.to_json()))
        return r, opts.out
    return run


def same(topology, qemu):
    return ("ok", "bus-address", 50.0)


def test_boots_and_columns_carry_the_qemu(tmp_path):
    p = plan()
    assert [b.id for b in boots(p)] == ["switch-cmb@default@host", "switch-cmb@default@11.1",
                                        "rootports-cmb-zen@default@host",
                                        "rootports-cmb-zen@default@11.1"]
    m = run_matrix(p, tmp_path / "m", run=runner(same))
    assert m.columns == [("default", "host"), ("default", "11.1")]
    assert [r.directory for r in m.runs][:2] == ["switch-cmb/default/host",
                                                  "switch-cmb/default/11.1"]
    assert m.status == 0 and m.qemu_regressions() == []
    text = summary(m)
    assert "default @ host" in text.splitlines()[0] and "default @ 11.1" in text.splitlines()[0]
    assert "0 QEMU regression(s) against host" in text
    doc = json.loads((tmp_path / "m/matrix.json").read_text())
    assert [q["label"] for q in doc["qemus"]] == ["host", "11.1"] and doc["baseline_qemu"] == "host"
    assert {c["qemu"] for c in doc["cells"]} == {"host", "11.1"}
    assert doc["runs"][1]["qemu_version"] == "11.1.3"


def test_a_different_verdict_on_the_later_qemu_is_a_qemu_regression(tmp_path):
    def behaviour(topology, qemu):
        if qemu == "11.1" and topology == "switch-cmb":
            return ("iommu-fault", "bus-address", 3.0)
        return same(topology, qemu)
    m = run_matrix(plan(), tmp_path / "m", run=runner(behaviour))
    (r,) = m.qemu_regressions()
    assert (r.axis, r.kind, r.topology, r.kernel, r.baseline_kernel, r.qemu, r.baseline_qemu) \
        == ("qemu", "verdict", "switch-cmb", "default", "default", "11.1", "host")
    assert m.regressions() == [] and m.status == 1
    assert "QEMU REGRESSION (verdict): switch-cmb p2p-copy nvme0 -> nvme1: default @ host ok, " \
        "default @ 11.1 iommu-fault" in summary(m)
    assert "## QEMU regressions" in render_md(m) and "<h2>QEMU regressions</h2>" in render_html(m)
    ktap = matrix_ktap(m)
    assert "not ok 5 no regression against default and QEMU host" in ktap
    assert "# QEMU verdict regression: switch-cmb" in ktap


def test_map_type_throughput_and_boot_differences(tmp_path):
    def behaviour(topology, qemu):
        if qemu != "11.1":
            return same(topology, qemu)
        if topology == "switch-cmb":
            return ("ok", "host-bridge", 50.0)
        return ("ok", "bus-address", 20.0)  # 60 % slower
    m = run_matrix(plan(), tmp_path / "m", run=runner(behaviour))
    kinds = {(r.topology, r.kind) for r in m.qemu_regressions()}
    assert kinds == {("switch-cmb", "mechanism"), ("rootports-cmb-zen", "throughput")}
    thr = next(r for r in m.qemu_regressions() if r.kind == "throughput")
    assert thr.reason == "throughput fell 60 %, more than the 50 % tolerance"
    # a looser tolerance forgives the drop, not the map type
    m2 = run_matrix(plan(tolerance=0.7), tmp_path / "m2", run=runner(behaviour))
    assert {r.kind for r in m2.qemu_regressions()} == {"mechanism"}

    def broken(topology, qemu):
        return "QEMU exited" if qemu == "11.1" and topology == "switch-cmb" else \
            same(topology, qemu)
    m3 = run_matrix(plan(), tmp_path / "m3", run=runner(broken))
    (b,) = m3.qemu_regressions()
    assert (b.kind, b.workload, b.now) == ("boot", "boot", "broke")
    assert "the run broke: QEMU exited" in b.reason
    assert m3.incomplete and m3.status == 1


def test_a_faster_later_qemu_and_small_drops_are_not_regressions(tmp_path):
    def behaviour(topology, qemu):
        return ("ok", "bus-address", 80.0 if qemu == "11.1" else 50.0)
    assert run_matrix(plan(), tmp_path / "m", run=runner(behaviour)).qemu_regressions() == []

    def slightly(topology, qemu):
        return ("ok", "bus-address", 30.0 if qemu == "11.1" else 50.0)  # -40 %
    assert run_matrix(plan(), tmp_path / "m2", run=runner(slightly)).qemu_regressions() == []


def test_kernels_compare_within_each_qemu(tmp_path):
    def behaviour(topology, qemu):
        return same(topology, qemu)

    def run(topo, opts):
        kernel = opts.out.parent.name
        if kernel == "new" and opts.out.name == "11.1" and topo.name == "switch-cmb":
            return runner(lambda t, q: ("rejected", "not-supported", None))(topo, opts)
        return runner(behaviour)(topo, opts)
    m = run_matrix(plan(kernels=("default", "new")), tmp_path / "m", run=run)
    (k,) = m.regressions()
    assert (k.axis, k.kernel, k.baseline_kernel, k.qemu, k.baseline_qemu) == \
        ("kernel", "new", "default", "11.1", "11.1")
    # and the same cell, against the baseline QEMU with the same kernel, is a QEMU regression
    (q,) = m.qemu_regressions()
    assert (q.kernel, q.qemu, q.baseline_qemu) == ("new", "11.1", "host")


def test_shards_carry_the_axis_and_merge_into_the_whole(tmp_path):
    def behaviour(topology, qemu):
        return ("iommu-fault", "bus-address", 3.0) if qemu == "11.1" and \
            topology == "rootports-cmb-zen" else same(topology, qemu)
    p = plan()
    whole = run_matrix(p, tmp_path / "whole", run=runner(behaviour))
    doc = plan_json(p, shards=2)
    assert doc["baseline_qemu"] == "host" and [q["version"] for q in doc["qemus"]] == \
        ["10.0.2", "11.1.3"]
    assert {"topology": "switch-cmb", "kernel": "default", "workload": "p2p-copy",
            "qemu": "11.1"} in doc["cells"]
    dirs = []
    for k in (1, 2):
        d = tmp_path / f"shard{k}"
        run_matrix(p, d, run=runner(behaviour), shard=(k, 2))
        dirs.append(d)
    assert sorted(b.id for s in partition(boots(p), 2) for b in s) == sorted(b.id for b in boots(p))
    merged = merge(dirs, tmp_path / "merged")
    assert [str(r) for r in merged.qemu_regressions()] == [str(r) for r in whole.qemu_regressions()]
    assert len(merged.qemu_regressions()) == 1 and merged.status == 1
    assert (tmp_path / "merged/rootports-cmb-zen/default/11.1/results.json").is_file()
    again = Matrix.from_json(json.loads((tmp_path / "merged/matrix.json").read_text()))
    assert again.qemu_labels == ["host", "11.1"] and again.mbps_tolerance == 0.5


def test_the_plan_id_follows_the_qemus():
    assert plan_id(plan()) != plan_id(plan(qemus=("host",)))
    assert plan_id(plan()) != plan_id(plan(qemus=("11.1", "host")))
    assert plan_id(plan()) == plan_id(plan())
    assert plan_id(plan()) != plan_id(plan(tolerance=0.3))


def test_without_qemus_nothing_changes(tmp_path):
    p = plan(qemus=())
    assert [b.id for b in boots(p)] == ["switch-cmb@default", "rootports-cmb-zen@default"]
    m = run_matrix(p, tmp_path / "m", run=runner(same))
    assert m.qemu_labels == [""] and m.columns == [("default", "")]
    assert [r.directory for r in m.runs] == ["switch-cmb/default", "rootports-cmb-zen/default"]
    assert "QEMU" not in summary(m)
    assert "qemu" not in plan_json(p)["cells"][0]
