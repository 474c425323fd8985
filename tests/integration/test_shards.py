"""A matrix cut into shards for a CI engine gives the same verdicts, and the same summed
coverage, as the matrix run whole: two shards in two parallel processes on real guests,
then merged."""

from __future__ import annotations

import json
import os
import subprocess
import sys

TESTBED = [sys.executable, "-m", "testbed"]
ARGS = ["-t", "switch-cmb", "-t", "rootports-cmb", "-k", "default", "-w", "p2p-copy",
        "--size", "256K", "--coverage", "drivers/pci/p2pdma.c"]
KEYS = ("topology", "kernel", "workload", "provider", "client", "predicted", "observed",
        "data_verified", "predicted_map_type", "observed_map_type", "verdict")


def cells(directory):
    data = json.loads((directory / "matrix.json").read_text())
    return sorted(tuple(c.get(k) for k in KEYS) for c in data["cells"]), data


def coverage(directory):
    """What the summed coverage says, without the call counts (a retried request adds one)."""
    doc = json.loads((directory / "coverage.json").read_text())["kernels"]["default"]
    files = {p: (f["executed"], f["not_executed"], sorted(f["untraceable"]))
             for p, f in doc["files"].items()}
    only = {t: s["only"] for t, s in doc["by_topology"].items()}
    return files, only, doc["cells"], doc


def test_shards_merged_equal_the_whole(real_qemu, tmp_path):
    env = {**os.environ, "TESTBED_STATE": str(tmp_path / "state")}
    plan = subprocess.run([*TESTBED, "matrix", "plan", *ARGS, "--json", "--shards", "2"],
                          capture_output=True, text=True, check=True, env=env, timeout=120)
    shards = json.loads(plan.stdout)["shards"]
    assert [len(s["boots"]) for s in shards] == [1, 1]
    whole = subprocess.run([*TESTBED, "matrix", *ARGS, "--jobs", "1", "--out",
                            str(tmp_path / "whole")], capture_output=True, text=True, env=env,
                           timeout=900)
    procs = [subprocess.Popen([*TESTBED, "matrix", *ARGS, "--shard", f"{k}/2", "--jobs", "1",
                               "--out", str(tmp_path / f"shard{k}")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in (1, 2)]
    for p in procs:
        out, err = p.communicate(timeout=900)
        assert p.returncode == 0, err
    assert whole.returncode == 0, whole.stderr
    merged = subprocess.run([*TESTBED, "matrix", "merge", str(tmp_path / "shard2"),
                             str(tmp_path / "shard1"), "--out", str(tmp_path / "merged")],
                            capture_output=True, text=True, env=env, timeout=120)
    assert merged.returncode == 0, merged.stderr
    whole_cells, whole_doc = cells(tmp_path / "whole")
    merged_cells, merged_doc = cells(tmp_path / "merged")
    assert merged_cells == whole_cells and len(whole_cells) == 4
    assert {c[6] for c in whole_cells} == {"ok", "rejected"}
    assert merged_doc["plan_id"] == whole_doc["plan_id"] == json.loads(plan.stdout)["plan_id"]
    assert merged_doc["regressions"] == whole_doc["regressions"] == []
    for run in merged_doc["runs"]:
        assert (tmp_path / "merged" / run["directory"] / "results.json").is_file()
    # the merged coverage is the whole matrix's: the same functions, cells and topologies
    whole_cov, merged_cov = coverage(tmp_path / "whole"), coverage(tmp_path / "merged")
    assert merged_cov[:3] == whole_cov[:3]
    executed = set(whole_cov[0]["drivers/pci/p2pdma.c"][0])
    assert {"calc_map_type_and_dist", "pci_p2pdma_map_type"} <= executed
    assert whole_cov[2] == ["switch-cmb@default:p2p-copy", "rootports-cmb@default:p2p-copy"]
    # per topology: what its runs executed (the refused pair still decides, allocates, frees)
    topos = whole_cov[3]["by_topology"]
    assert set(topos) == {"switch-cmb", "rootports-cmb"}
    assert all(t["functions"] >= 2 for t in topos.values())
    assert whole_cov[3]["lost"] == 0 and (tmp_path / "merged" / "coverage-default.xml").is_file()
    # a shard of another plan is refused
    other = subprocess.run([*TESTBED, "matrix", "merge", str(tmp_path / "shard1"),
                            str(tmp_path / "whole"), "--out", str(tmp_path / "bad")],
                           capture_output=True, text=True, env=env, timeout=60)
    assert other.returncode == 2 and "not a shard" in other.stderr
