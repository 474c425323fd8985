"""Matrix shards and their merge on synthetic results (pure: no QEMU)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from testbed.errors import UsageError
from testbed.results.model import RunResult
from testbed.run.matrix import run_matrix
from testbed.run.merge import merge
from testbed.run.plan import KernelEntry, MatrixPlan
from testbed.run.shard import Boot, boot_cost, boots, parse_shard, partition, plan_id, plan_json
from testbed.spec import load_topology
from testbed.verdicts.record import Record

NAMES = ("switch-cmb", "rootports-cmb", "switch-cmb-intel-iommu", "fabric-large")


def plan(names=NAMES, kernels=("default", "new")):
    return MatrixPlan([load_topology(n) for n in names],
                      [KernelEntry(k, k, None if k == "default" else SimpleNamespace(
                          identity=lambda k=k: k), k) for k in kernels], ("p2p-copy",))


def fake_run(topo, opts):
    opts.out.mkdir(parents=True)
    r = RunResult(topology=topo.name, kernel={"release": "7.3.4", "p2pdma": True},
                  finished=True)
    r.workloads = [Record("p2p-copy", "nvme0", "nvme1", "ok", "why",
                          "ok" if "new" not in str(opts.out) or topo.name != "fabric-large"
                          else "rejected", True, 20.0, predicted_map_type="bus-address",
                          observed_map_type="bus-address")]
    (opts.out / "results.json").write_text(json.dumps(r.to_json()))
    return r, opts.out


def test_partition_is_deterministic_balanced_and_whole():
    all_boots = boots(plan())
    assert len(all_boots) == 8
    for n in (1, 2, 3, 8, 9):
        shards = partition(all_boots, n)
        ids = [sorted(b.id for b in s) for s in shards]
        assert [sorted(b.id for b in s) for s in partition(list(reversed(all_boots)), n)] == ids
        assert sorted(b.id for s in shards for b in s) == sorted(b.id for b in all_boots)
        loads = [sum(b.cost for b in s) for s in shards]
        if n <= len(all_boots):
            assert max(loads) - min(loads) <= max(b.cost for b in all_boots)


def test_viommu_and_more_pairs_cost_more():
    cost = {n: boot_cost(load_topology(n), ("p2p-copy",)) for n in NAMES}
    assert cost["switch-cmb-intel-iommu"] > cost["switch-cmb"]
    assert cost["fabric-large"] > cost["switch-cmb"]


def test_plan_json_for_ci_engines():
    doc = plan_json(plan(), shards=3)
    assert doc["plan_id"] == plan_id(plan()) and len(doc["plan_id"]) == 16
    assert [b["id"] for b in doc["boots"]][:2] == ["switch-cmb@default", "switch-cmb@new"]
    assert [s["shard"] for s in doc["shards"]] == ["1/3", "2/3", "3/3"]
    assert {"topology": "fabric-large", "kernel": "new", "workload": "p2p-copy"} in doc["cells"]
    assert plan_id(plan(names=NAMES[:2])) != doc["plan_id"]


@pytest.mark.parametrize("text", ["0/2", "3/2", "1", "a/b", "1/0", "-1/2", ""])
def test_bad_shards(text):
    with pytest.raises(UsageError, match="K/N"):
        parse_shard(text)


def test_shards_merge_into_the_whole(tmp_path):
    p = plan()
    whole = run_matrix(p, tmp_path / "whole", run=fake_run)
    dirs = []
    for k in (1, 2, 3):
        d = tmp_path / f"shard{k}"
        d.mkdir()
        m = run_matrix(p, d, run=fake_run, shard=(k, 3), jobs=2)
        assert m.shard == f"{k}/3" and m.plan_id == whole.plan_id
        dirs.append(d)
    out = tmp_path / "merged"
    out.mkdir()
    merged = merge(list(reversed(dirs)), out)

    def strip(m):
        return [{k: v for k, v in c.to_json().items() if k not in ("mb_per_s",)}
                for c in m.cells]
    assert strip(merged) == strip(whole)
    assert [str(r) for r in merged.regressions()] == [str(r) for r in whole.regressions()]
    assert len(merged.regressions()) == 1 and merged.status == whole.status == 1
    assert (out / "fabric-large" / "new" / "results.json").is_file()
    assert json.loads((out / "matrix.json").read_text())["plan_id"] == whole.plan_id


def test_merge_refuses_bad_shard_sets(tmp_path):
    p = plan(names=NAMES[:2])
    for k in (1, 2):
        (tmp_path / f"s{k}").mkdir()
        run_matrix(p, tmp_path / f"s{k}", run=fake_run, shard=(k, 2))
    (tmp_path / "other").mkdir()
    run_matrix(plan(names=NAMES[2:3]), tmp_path / "other", run=fake_run, shard=(1, 2))
    (tmp_path / "o").mkdir()
    with pytest.raises(UsageError, match="missing shard"):
        merge([tmp_path / "s1"], tmp_path / "o")
    with pytest.raises(UsageError, match="given twice"):
        merge([tmp_path / "s1", tmp_path / "s1", tmp_path / "s2"], tmp_path / "o")
    with pytest.raises(UsageError, match="different plans"):
        merge([tmp_path / "s1", tmp_path / "other"], tmp_path / "o")
    with pytest.raises(UsageError, match="no matrix.json"):
        merge([tmp_path], tmp_path / "o")


def test_cli_plan_json_and_bad_merge(tmp_path, capsys, monkeypatch):
    from testbed import cli
    monkeypatch.setattr(cli, "install_signal_handlers", lambda: None)
    assert cli.main(["matrix", "plan", "-t", "switch-cmb", "-k", "default", "--json",
                     "--shards", "2"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["shards"][1] == {"shard": "2/2", "boots": [], "cost": 0}
    assert cli.main(["matrix", "merge", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "no matrix.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["matrix", "-t", "switch-cmb", "-k", "default", "--jobs", "0"])
    assert cli.main(["matrix", "-t", "switch-cmb", "-k", "default", "--shard", "3/2"]) == 2
    assert Boot("a@k", "a", "k", (), 1.0).to_json()["id"] == "a@k"


def test_a_run_that_crashes_is_an_error_cell_and_its_shard_merges(tmp_path, monkeypatch):
    """Two shards; in shard 2 the boot of rootports-cmb dies with the TimeoutError paramiko
    raised under load (not a TestbedError).  The real run_topology records it as a broken
    run (results written, the traceback kept beside them), the shard writes its
    matrix.json with an error cell for the planned workload, and the pair merges."""
    from testbed.run import runner

    def crash(topo, options, caps=None):
        raise TimeoutError()  # as paramiko's chan.sendall raised it

    monkeypatch.setenv("TESTBED_STATE", str(tmp_path / "state"))
    monkeypatch.setattr(runner, "boot", crash)

    def run(topo, opts):
        return runner.run_topology(topo, opts) if topo.name == "rootports-cmb" \
            else fake_run(topo, opts)

    p = plan(names=NAMES[:2], kernels=("default",))
    dirs = []
    for k in (1, 2):
        d = tmp_path / f"s{k}"
        d.mkdir()
        run_matrix(p, d, run=run, shard=(k, 2))
        assert (d / "matrix.json").is_file()
        dirs.append(d)
    broken = [d for d in dirs if (d / "rootports-cmb").is_dir()][0]
    doc = json.loads((broken / "matrix.json").read_text())
    assert doc["status"] == 1 and len(doc["incomplete"]) == 1
    assert "internal error (TimeoutError" in doc["runs"][0]["error"]
    assert doc["runs"][0]["error_kind"] == "internal"
    assert [(c["topology"], c["workload"], c["verdict"]) for c in doc["cells"]] == \
        [("rootports-cmb", "p2p-copy", "error")]
    run_dir = broken / "rootports-cmb" / "default"
    assert "TimeoutError" in (run_dir / "traceback.txt").read_text()
    assert json.loads((run_dir / "results.json").read_text())["finished"] is False
    (tmp_path / "m").mkdir()
    merged = merge(dirs, tmp_path / "m")
    verdicts = {(c.topology, c.workload): c.verdict for row in merged.rows()
                for c in [merged.cell(row, "default")]}
    assert verdicts == {("switch-cmb", "p2p-copy"): "ok", ("rootports-cmb", "p2p-copy"): "error"}
    assert merged.status == 1
