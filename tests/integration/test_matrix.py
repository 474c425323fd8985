"""`testbed matrix` on real guests: switch-cmb, the image's kernel against itself (once as
`default`, once as an unpacked package with its modules): no regression, exit 0."""

from __future__ import annotations

import json
import subprocess
import sys

TESTBED = [sys.executable, "-m", "testbed"]


def test_matrix_default_against_itself(image_kernel_package, image, tmp_path):
    out = tmp_path / "matrix"
    proc = subprocess.run([*TESTBED, "matrix", "--topology", "switch-cmb",
                           "--kernel", "default", "--kernel", str(image_kernel_package),
                           "--workload", "p2p-copy", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("matrix.json", "matrix.md", "matrix.html"):
        assert (out / name).is_file(), name
    doc = json.loads((out / "matrix.json").read_text())
    labels = [k["label"] for k in doc["kernels"]]
    assert labels == ["default", image.kernel_release]
    assert doc["baseline"] == "default" and doc["status"] == 0
    assert doc["regressions"] == [] and doc["incomplete"] == []

    # one cell per kernel × pair, each matching its run's own results.json
    cells = {(c["kernel"], c["provider"], c["client"]): c for c in doc["cells"]}
    pairs = {("nvme0", "nvme1"), ("nvme1", "nvme0")}
    assert set(cells) == {(k, p, c) for k in labels for p, c in pairs}
    for run in doc["runs"]:
        assert run["release"] == image.kernel_release and run["error"] == ""
        results = json.loads((out / run["directory"] / "results.json").read_text())
        for w in results["workloads"]:
            if w["name"] != "p2p-copy":
                continue
            cell = cells[(run["kernel"], w["provider"], w["client"])]
            assert (cell["predicted"], cell["observed"], cell["data_verified"],
                    cell["mb_per_s"]) == (w["predicted"], w["observed"], w["data_verified"],
                                          w.get("mb_per_s"))
            assert cell["observed"] == "ok" and cell["data_verified"] is True
            assert cell["mb_per_s"] and cell["mb_per_s"] > 0

    md = (out / "matrix.md").read_text()
    assert "**PASS**" in md and f"| default | {image.kernel_release} |" in md
    html = (out / "matrix.html").read_text()
    assert html.count('class="cell ok"') == 4
    assert "PASS" in proc.stdout.splitlines()[-1]
