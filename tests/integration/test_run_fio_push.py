"""`testbed run` as a user types it: fio with --fio-arg and a pushed job file, and the
README's own --push example (a pushed program keeps its executable bit)."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_fio_args_a_pushed_job_file_and_a_pushed_program(real_qemu, tmp_path):
    (tmp_path / "small.fio").write_text("[seq-32k]\nrw=write\nbs=32k\nsize=256k\nverify=md5\n")
    prog = tmp_path / "mytest"
    prog.write_text("#!/bin/sh\necho mytest ran as $(id -un)\n")
    prog.chmod(0o755)
    out = tmp_path / "out"
    res = subprocess.run(
        [sys.executable, "-m", "testbed", "run", "switch-cmb", "-w", "fio", "--pair", "nvme0:nvme1",
         "--fio-arg", "iodepth=2", "--fio-arg", "/root/small.fio",
         "--push", "./small.fio:/root/small.fio",
         "--push", "./mytest:/root/mytest", "--exec", "/root/mytest", "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
        env={**os.environ, "TESTBED_STATE": str(tmp_path / "state")})
    assert res.returncode == 0, res.stdout + res.stderr
    data = json.loads((out / "results.json").read_text())
    fio = [w for w in data["workloads"] if w["name"] == "fio"]
    # one pair proves the options reach fio (the other direction ran the same job: 2x time)
    assert [(w["provider"], w["client"]) for w in fio] == [("nvme0", "nvme1")]
    assert all(w["observed"] == "ok" and w["data_verified"] for w in fio)
    jobs = fio[0]["data"]["jobs"]
    assert [j["job"] for j in jobs] == ["seq-32k"] and jobs[0]["options"]["bs"] == "32k"
    assert fio[0]["data"]["phases"][0]["summary"]["global"]["iodepth"] == "2"
    ex = next(w for w in data["workloads"] if w["name"] == "exec")
    assert (ex["exit_status"], ex["stdout"]) == (0, "mytest ran as root\n"), ex


def test_fio_arg_without_fio_is_bad_input(tmp_path):
    res = subprocess.run([sys.executable, "-m", "testbed", "run", "switch-cmb", "-w",
                          "p2p-copy", "--fio-arg", "bs=4k"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "TESTBED_STATE": str(tmp_path)})
    assert res.returncode == 2 and "add -w fio" in res.stderr
