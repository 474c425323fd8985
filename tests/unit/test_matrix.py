"""The matrix's regression logic and rendering on synthetic results (no QEMU)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from testbed.errors import UsageError
from testbed.run.cells import Matrix, add_run, find_regressions
from testbed.run.matrix import prepare_out, run_matrix, slug
from testbed.run.plan import KernelEntry, MatrixPlan, _disambiguate, plan_matrix
from testbed.run.render import render_html, render_md, summary, write_matrix
from testbed.results.model import RunResult
from testbed.spec import load_topology
from testbed.verdicts.record import Record


def copy(provider, client, observed="ok", data=True, mbps=20.0, predicted="ok", detail=""):
    return Record(name="p2p-copy", provider=provider, client=client, predicted=predicted,
                  observed=observed, data_verified=data, mb_per_s=mbps, detail=detail)


def baseline(provider, client, data=True, mbps=300.0):
    return Record(name="host-baseline", provider=provider, client=client, data_verified=data,
                  mb_per_s=mbps)


def result(*records, error="", release="7.3.4", p2pdma=True, error_kind=""):
    r = RunResult(topology="switch-cmb", kernel={"release": release, "p2pdma": p2pdma})
    r.workloads = [Record(name="inventory"), *records]
    r.error = error
    r.error_kind = error_kind or ("boot-timeout" if "boot timeout" in error else
                                  "boot-failed" if error else "")
    r.finished = not error
    r.boot_seconds = 4.2
    return r


def matrix(kernels=("base", "new")):
    return Matrix(kernels=[{"label": k, "spec": k, "description": k, "release": None,
                            "p2pdma": None} for k in kernels], topologies=["switch-cmb"])


def test_same_results_no_regression():
    m = matrix()
    for k in ("base", "new"):
        add_run(m, "switch-cmb", k, result(copy("nvme0", "nvme1"), copy("nvme1", "nvme0"),
                                           baseline("nvme0", "nvme1")), f"switch-cmb/{k}")
    assert find_regressions(m) == []
    assert m.status == 0
    assert len(m.rows()) == 3
    assert m.cell(("switch-cmb", "p2p-copy", "nvme0", "nvme1"), "new").mb_per_s == 20.0


@pytest.mark.parametrize("later", ["rejected", "iommu-fault", "unsupported", "error"])
def test_ok_to_anything_else_is_a_regression(later):
    m = matrix()
    add_run(m, "switch-cmb", "base", result(copy("nvme0", "nvme1")), "a")
    add_run(m, "switch-cmb", "new", result(copy("nvme0", "nvme1", observed=later, data=False,
                                                detail="the reason\nmore")), "b")
    regs = find_regressions(m)
    assert len(regs) == 1
    r = regs[0]
    assert (r.kernel, r.baseline_kernel, r.was, r.now) == ("new", "base", "ok", later)
    assert "the reason" in r.reason and "more" not in r.reason
    assert m.status == 1


def test_improvement_and_unchanged_non_ok_are_not_regressions():
    m = matrix()
    add_run(m, "switch-cmb", "base", result(copy("a", "b", observed="rejected", data=False),
                                            copy("c", "d", observed="rejected", data=False)), "x")
    add_run(m, "switch-cmb", "new", result(copy("a", "b", observed="ok"),
                                           copy("c", "d", observed="iommu-fault", data=False)),
            "y")
    assert find_regressions(m) == []


def test_data_no_longer_verified_is_a_regression_even_without_a_verdict():
    m = matrix()
    add_run(m, "switch-cmb", "base", result(baseline("nvme0", "nvme1")), "x")
    add_run(m, "switch-cmb", "new", result(baseline("nvme0", "nvme1", data=False)), "y")
    regs = find_regressions(m)
    assert [r.reason.split(":")[0] for r in regs] == ["data no longer verified"]


def test_broken_run_makes_every_ok_cell_a_regression_and_is_incomplete():
    m = matrix(("base", "new", "newer"))
    add_run(m, "switch-cmb", "base", result(copy("nvme0", "nvme1"), copy("nvme1", "nvme0")), "x")
    add_run(m, "switch-cmb", "new", result(error="switch-cmb: the guest failed to boot: "
                                                 "Kernel panic - not syncing: VFS: Unable to "
                                                 "mount root fs\nmore"), "y")
    add_run(m, "switch-cmb", "newer", result(copy("nvme0", "nvme1")), "z")
    regs = find_regressions(m)
    assert sorted((r.kernel, r.now) for r in regs) == [("new", "error"), ("new", "error"),
                                                        ("newer", "missing")]
    assert any("Unable to mount root fs" in r.reason for r in regs)
    assert [r.kernel for r in m.incomplete] == ["new"]
    assert m.status == 1


def test_a_broken_baseline_is_not_a_pass():
    m = matrix()
    add_run(m, "switch-cmb", "base", result(error="boot failed"), "x")
    add_run(m, "switch-cmb", "new", result(copy("nvme0", "nvme1")), "y")
    assert find_regressions(m) == []
    assert m.status == 1  # incomplete


def test_runs_not_yet_done_are_not_regressions():
    m = matrix(("base", "new"))
    add_run(m, "switch-cmb", "base", result(copy("nvme0", "nvme1")), "x")
    assert find_regressions(m) == []
    assert m.cell(("switch-cmb", "p2p-copy", "nvme0", "nvme1"), "new") is None


def test_rendering_md_html_json_and_summary(tmp_path):
    m = matrix(("7.3.4 (build)", "7.3.4 (build-patched)"))
    add_run(m, "switch-cmb", "7.3.4 (build)", result(copy("nvme0", "nvme1", mbps=19.84)),
            "switch-cmb/7.3.4-build")
    add_run(m, "switch-cmb", "7.3.4 (build-patched)",
            result(copy("nvme0", "nvme1", observed="rejected", data=False, mbps=None,
                        detail="cannot be used for peer-to-peer DMA <x>")),
            "switch-cmb/7.3.4-build-patched")
    write_matrix(m, tmp_path)
    doc = json.loads((tmp_path / "matrix.json").read_text())
    assert doc["status"] == 1 and doc["baseline"] == "7.3.4 (build)"
    assert {(c["kernel"], c["observed"], c["data_verified"], c["mb_per_s"])
            for c in doc["cells"]} == {("7.3.4 (build)", "ok", True, 19.84),
                                       ("7.3.4 (build-patched)", "rejected", False, None)}
    assert doc["regressions"][0]["now"] == "rejected"

    md = (tmp_path / "matrix.md").read_text()
    table = [ln for ln in md.splitlines() if ln.startswith("| switch-cmb | p2p-copy")]
    assert table == ["| switch-cmb | p2p-copy | nvme0 → nvme1 | ok | ok, 19.8 MB/s | "
                     "**rejected** ✗ |"]
    assert "| topology | workload | pair | predicted | 7.3.4 (build) | 7.3.4 (build-patched) |\n" \
           "|---|---|---|---|---|---|\n| switch-cmb" in md
    assert "## Regressions" in md and "**FAIL**" in md

    html = (tmp_path / "matrix.html").read_text()
    assert re.search(r'<td class="cell ok"[^>]*><a class="report" '
                     r'href="switch-cmb/7.3.4-build/report.html">ok</a><span class="mbps">'
                     r'19.8 MB/s', html)
    # every cell links to its run's report.html, and so does the runs table
    links = re.findall(r'<td class="cell[^"]*"[^>]*><a class="report" href="([^"]+)"', html)
    assert links == ["switch-cmb/7.3.4-build/report.html",
                     "switch-cmb/7.3.4-build-patched/report.html"]
    assert html.count('href="switch-cmb/7.3.4-build-patched/report.html"') == 2
    assert 'class="cell rejected regression"' in html
    assert "&lt;x&gt;" in html and "<x>" not in html  # escaped
    assert html.count("<tr>") == 1 + 1 + 1 + 2 + 1 + 2  # cells, kernels, runs tables

    text = summary(m, tmp_path)
    assert "REGRESSION: switch-cmb p2p-copy nvme0 -> nvme1" in text
    assert text.splitlines()[-1].startswith("FAIL: 1 regression(s)")


def test_pass_rendering(tmp_path):
    m = matrix(("default",))
    add_run(m, "switch-cmb", "default", result(copy("nvme0", "nvme1")), "d")
    assert m.status == 0
    assert "**PASS**" in render_md(m) and "status-pass" in render_html(m)
    assert summary(m).splitlines()[-1].startswith("PASS: 0 regression(s)")


def test_duplicate_labels_are_disambiguated_by_path():
    a = KernelEntry("7.3.4", "/k/build/arch/x86/boot/bzImage",
                    SimpleNamespace(image_file=Path("/k/build/arch/x86/boot/bzImage")), "")
    b = KernelEntry("7.3.4", "/k/build-patched/arch/x86/boot/bzImage",
                    SimpleNamespace(image_file=Path("/k/build-patched/arch/x86/boot/bzImage")),
                    "")
    c = KernelEntry("default", "default", None, "")
    _disambiguate([c, a, b])
    assert [c.label, a.label, b.label] == ["default", "7.3.4 (build)", "7.3.4 (build-patched)"]
    assert slug(b.label) == "7.3.4-build-patched"


def test_bad_input_before_anything_boots(tmp_path):
    with pytest.raises(UsageError, match="no such topology"):
        plan_matrix(["no-such-topology"], ["default"])
    with pytest.raises(UsageError, match="same kernel"):
        plan_matrix(["switch-cmb"], ["default", "default"])
    with pytest.raises(UsageError, match="not a kernel directory"):
        plan_matrix(["switch-cmb"], ["default", str(tmp_path)])
    with pytest.raises(UsageError, match="given twice"):
        plan_matrix(["switch-cmb", "switch-cmb"], ["default"])
    with pytest.raises(UsageError, match="unknown"):
        plan_matrix(["switch-cmb"], ["default"], ["nope"])
    with pytest.raises(UsageError, match="at least one kernel"):
        plan_matrix(["switch-cmb"], [])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(UsageError, match="not empty"):
        prepare_out(tmp_path / "full")


def test_run_matrix_runs_every_topology_kernel_in_order(tmp_path):
    topo = load_topology("switch-cmb")
    kernels = [KernelEntry("default", "default", None, "image"),
               KernelEntry("6.12", "/p", SimpleNamespace(identity=lambda: "/p"), "pkg", "6.12", False)]
    plan = MatrixPlan([topo], kernels, ("p2p-copy",))
    calls = []

    def fake_run(t, opts):
        calls.append((t.name, opts.kernel, opts.out.relative_to(tmp_path).as_posix()))
        opts.out.mkdir(parents=True)
        if opts.kernel is None:
            return result(copy("nvme0", "nvme1")), opts.out
        return result(copy("nvme0", "nvme1", observed="unsupported", data=None, mbps=None,
                           detail="the guest kernel has no CONFIG_PCI_P2PDMA"),
                      p2pdma=False, release="6.12.1"), opts.out

    m = run_matrix(plan, tmp_path, run=fake_run)
    assert [c[2] for c in calls] == ["switch-cmb/default", "switch-cmb/6.12"]
    assert calls[0][1] is None and calls[1][1] is kernels[1].kernel
    assert [r.now for r in m.regressions()] == ["unsupported"]
    assert m.status == 1
    assert (tmp_path / "matrix.json").is_file()
    assert m.kernels[1]["p2pdma"] is False and m.kernels[0]["release"] == "7.3.4"


def test_a_boot_timeout_is_retried_once_a_panic_is_not(tmp_path):
    topo = load_topology("switch-cmb")
    kernels = [KernelEntry("default", "default", None, "image"),
               KernelEntry("new", "/p", SimpleNamespace(identity=lambda: "/p"), "pkg")]
    errors = {None: ["switch-cmb: the guest never printed 'ready' within the boot timeout",
                     ""],
              "new": ["switch-cmb: the guest failed to boot: Kernel panic - not syncing: VFS"]}
    calls = []

    def fake_run(t, opts):
        key = None if opts.kernel is None else "new"
        calls.append(key)
        opts.out.mkdir(parents=True)
        err = errors[key].pop(0)
        return (result(error=err) if err else result(copy("nvme0", "nvme1"))), opts.out

    m = run_matrix(MatrixPlan([topo], kernels), tmp_path, run=fake_run)
    assert calls == [None, None, "new"]
    assert (tmp_path / "switch-cmb/default.attempt1").is_dir()
    assert m.runs[0].error == "" and "boot timeout" in m.runs[0].first_attempt_error
    assert "Kernel panic" in m.runs[1].error
    assert [r.now for r in m.regressions()] == ["error"]


# -- IOMMU group changes between kernels -------------------------------------------------------

OLD_GROUPS = [["rp0"], ["sw0"], ["sw0-dp0", "nvme0"], ["sw0-dp1", "nvme1"]]
V3_GROUPS = [["rp0"], ["sw0", "sw0-dp0", "sw0-dp1", "nvme0", "nvme1"]]


def isolation(groups, algorithm="upstream-walk", holes=True):
    verdict = "isolation-hole" if holes else "ok"
    return [Record(name="isolation", predicted=algorithm, observed=algorithm,
                   data={"observed_groups": groups}),
            Record(name="isolation", provider="nvme0", client="nvme1", predicted=verdict,
                   observed=verdict)]


def test_merged_groups_are_listed_and_are_not_a_regression(tmp_path):
    m = matrix(("7.3.4 (build)", "7.3.4 (build-patched)"))
    add_run(m, "switch-cmb", "7.3.4 (build)", result(*isolation(OLD_GROUPS)), "a")
    add_run(m, "switch-cmb", "7.3.4 (build-patched)",
            result(*isolation(V3_GROUPS, "acs-v3", holes=False)), "b")
    assert m.regressions() == [] and m.status == 0
    (change,) = m.group_changes()
    assert (change.topology, change.kernel, change.baseline_kernel) == \
        ("switch-cmb", "7.3.4 (build-patched)", "7.3.4 (build)")
    (c,) = change.changes
    assert c.kind == "merged"
    assert c.before == [["sw0"], ["sw0-dp0", "nvme0"], ["sw0-dp1", "nvme1"]]
    assert c.after == [["sw0", "sw0-dp0", "sw0-dp1", "nvme0", "nvme1"]]
    text = summary(m)
    assert ("GROUPS CHANGED: switch-cmb: 7.3.4 (build) -> 7.3.4 (build-patched): merged {sw0} "
            "+ {sw0-dp0, nvme0} + {sw0-dp1, nvme1} -> {sw0, sw0-dp0, sw0-dp1, nvme0, nvme1}") \
        in text
    assert re.search(r"switch-cmb +isolation +nvme0->nvme1 +isolation-hole +ok\n", text)
    write_matrix(m, tmp_path)
    doc = json.loads((tmp_path / "matrix.json").read_text())
    assert doc["group_changes"][0]["changes"][0]["kind"] == "merged"
    assert doc["runs"][1]["iommu_groups"] == V3_GROUPS
    md = (tmp_path / "matrix.md").read_text()
    assert "## IOMMU group changes" in md and "merged `sw0` + `sw0-dp0, nvme0`" in md
    html = (tmp_path / "matrix.html").read_text()
    assert "<h2>IOMMU group changes</h2>" in html and 'class="cell isolation-hole"' in html


def test_a_new_hole_is_a_regression_and_a_split():
    m = matrix()
    add_run(m, "switch-cmb", "base", result(*isolation(V3_GROUPS, "acs-v3", holes=False)), "a")
    add_run(m, "switch-cmb", "new", result(*isolation(OLD_GROUPS)), "b")
    (reg,) = m.regressions()
    assert (reg.workload, reg.was, reg.now) == ("isolation", "ok", "isolation-hole")
    assert [c.kind for c in m.group_changes()[0].changes] == ["split"]


def test_same_groups_or_no_isolation_record_list_no_change():
    m = matrix(("a", "b", "c"))
    add_run(m, "switch-cmb", "a", result(*isolation(OLD_GROUPS)), "a")
    add_run(m, "switch-cmb", "b", result(*isolation([list(g) for g in OLD_GROUPS])), "b")
    add_run(m, "switch-cmb", "c", result(copy("nvme0", "nvme1")), "c")
    assert m.group_changes() == []


def test_group_changes_survive_a_shard_merge_round_trip():
    m = matrix()
    add_run(m, "switch-cmb", "base", result(*isolation(OLD_GROUPS)), "a")
    add_run(m, "switch-cmb", "new", result(*isolation(V3_GROUPS, "acs-v3", holes=False)), "b")
    back = Matrix.from_json(json.loads(json.dumps(m.to_json())))
    assert [str(g) for g in back.group_changes()] == [str(g) for g in m.group_changes()]


def test_a_matrix_kernel_boots_the_architecture_of_its_topologies(tmp_path):
    # a profile kernel is built per architecture: refused before anything is built
    with pytest.raises(UsageError, match=r"mixes architectures \(aarch64, x86_64\)"):
        plan_matrix(["switch-cmb", "switch-cmb-arm64"], ["default", "profile:base"])
    bz = tmp_path / "bzImage"  # an x86 boot header is what names the architecture
    bz.write_bytes(bytes(0x202) + b"HdrS" + bytes(0x200))
    with pytest.raises(UsageError, match="is an x86_64 kernel; the topology's machine is aarch64"):
        plan_matrix(["switch-cmb-arm64"], ["default", str(bz)])
    # the images' kernels boot both: a mixed matrix of 'default' stays allowed
    mixed = plan_matrix(["switch-cmb", "switch-cmb-arm64"], ["default"])
    assert {t.profile.arch for t in mixed.topologies} == {"x86_64", "aarch64"}
