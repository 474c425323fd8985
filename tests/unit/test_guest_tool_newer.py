"""The guest tool's newer sub-commands: fio's JSON (recorded from fio 3.39 in a guest),
iovec cases, the byte-range pattern, and iovec end to end on a file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from testbed.guest_tool import cli, fio, fiojson, iovec, pattern
from testbed.guest_tool.usage import UsageError

FIO = Path(__file__).parent / "data" / "fio"


def summary(name):
    return fiojson.summarize(fiojson.load((FIO / name).read_text()))


# -- fio's JSON -------------------------------------------------------------------------------
def test_fio_json_after_fio_error_lines():
    """fio prints 'fio: pid=212, err=84/...' into the JSON stream before the document."""
    text = (FIO / "verify-failed.json").read_text()
    assert text.startswith("fio: pid=")
    s = fiojson.summarize(fiojson.load(text))
    assert s["fio"] == "fio-3.39" and fiojson.job_errors(s) == [("v", 84)]


def test_fio_summary_of_two_p2pmem_jobs():
    s = summary("p2pmem-two-jobs.json")
    assert [j["job"] for j in s["jobs"]] == ["a", "b"] and fiojson.job_errors(s) == []
    assert s["global"]["mem"].startswith("mmapshared:/sys/bus/pci/devices/")
    w = s["jobs"][0]["write"]
    assert w["io_bytes"] == 1 << 20 and w["clat_ns"]["p99"] > w["clat_ns"]["p50"] > 0
    assert s["totals"]["write"]["io_bytes"] == 1310720 and s["totals"]["read"]["mb_per_s"] > 0


def test_verify_only_write_side_has_no_rate():
    """--verify_only reports the write bytes with no time: no MB/s from it."""
    assert summary("verify-failed.json")["totals"]["write"]["mb_per_s"] is None


def test_no_json_is_a_value_error():
    with pytest.raises(ValueError):
        fiojson.load("fio: engine libaio not loadable\n")


def phase(name, summary_doc, **kw):
    return {"name": name, "argv": ["fio"], "seconds": 1.0, "stderr": "", "verify_lines": [],
            "summary": summary_doc, "exit_status": 0, "signal": None, **kw}


def test_fio_judge_ok_verified():
    doc = fio.judge({fio.schema.PHASES: [phase("run", summary("p2pmem-two-jobs.json"))]})
    assert doc["steps"]["io"]["ok"] and doc["data_verified"] is True
    assert doc["mb_per_s"]["read"] > 0


def test_fio_judge_verify_failure_is_bad_data_not_failed_io():
    lines = (FIO / "verify-failed.stderr").read_text()
    doc = fio.judge({fio.schema.PHASES: [
        phase("write", summary("p2pmem-two-jobs.json")),
        phase("verify", summary("verify-failed.json"),
              verify_lines=fiojson.verify_lines(lines))]})
    assert doc["steps"]["io"]["ok"] and doc["data_verified"] is False
    assert doc["verify_errors"][0].startswith("crc32c: verify failed at file /dev/nvme1n1")


def test_fio_judge_signal_and_other_errnos_fail_the_io():
    doc = fio.judge({fio.schema.PHASES: [phase("run", None, signal=7, exit_status=None)]})
    assert not doc["steps"]["io"]["ok"] and "signal 7" in doc["steps"]["io"]["error"]
    s = summary("p2pmem-two-jobs.json")
    s["jobs"][1]["error"] = 22
    doc = fio.judge({fio.schema.PHASES: [phase("run", s)]})
    assert doc["steps"]["io"]["errno"] == 22


# -- iovec cases ------------------------------------------------------------------------------
def test_parse_case_and_layout():
    segs, opts = iovec.parse_case("host:4K,p2p:512x3/start=512/gap=1K")
    assert segs == [("host", 4096)] + [("p2p", 512)] * 3
    assert opts == {"start": 512, "gap": 1024, "hgap": 0}
    place, need = iovec.layout(segs, opts)
    assert place == [("host", 0, 4096), ("p2p", 512, 512), ("p2p", 2048, 512),
                     ("p2p", 3584, 512)]
    assert need == {"host": 4096, "p2p": 8192}


@pytest.mark.parametrize("bad", ["gpu:4K", "p2p", "p2p:4Q", "p2p:4Kx0", "p2p:4K/start",
                                 "p2p:4K/bogus=1"])
def test_bad_cases_are_usage_errors(bad):
    with pytest.raises(UsageError):
        iovec.parse_case(bad)


def test_pattern_range_is_a_slice_of_the_block_stream():
    whole = pattern.pattern(3, 1, 3)
    assert pattern.pattern_range(3, 4096 + 100, 5000) == whole[100:5100]
    assert pattern.pattern_range(3, 0, 0) == b""


def test_diff_ranges_names_what_landed_where():
    exp = pattern.pattern_range(5, 8192, 16384)
    got = bytearray(exp)
    got[4096:8192] = pattern.pattern_block(6, 3)  # another seed's block: crossed data
    got[12800:13312] = bytes([pattern.POISON]) * 512
    out = pattern.diff_ranges(got, exp, 8192)
    assert [(m["dev_start"], m["dev_end"]) for m in out] == [(12288, 16384), (20992, 21504)]
    assert out[0]["found"] == {"kind": "stamped", "seed": 6, "block": 3}
    assert out[1]["found"]["kind"] == "poison"


def _direct_file(tmp_path, size):
    dev = tmp_path / "disk"
    with open(dev, "wb") as f:
        f.truncate(size)
    try:
        os.close(os.open(dev, os.O_RDWR | os.O_DIRECT))
    except OSError:
        if os.environ.get("CI"):
            pytest.fail("CI is set but tmp_path does not support O_DIRECT", pytrace=False)
        pytest.skip("SKIPPED, NOT PASSED: the filesystem under tmp_path has no O_DIRECT")
    return dev


def test_iovec_of_host_segments_on_a_file(capsys, tmp_path):
    """The whole sub-command on a file: both phases verified; a corrupted host segment is
    caught and named."""
    dev = _direct_file(tmp_path, 8 << 20)
    argv = ["iovec", "--client", str(dev), "--case", "host:4K,host:8K/hgap=4K",
            "--case", "host:512x9/hgap=512", "--seed", "4"]
    assert cli.main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["data_verified"] is True and len(doc["cases"]) == 2
    assert all(c["write"]["bytes"] == c["total"] for c in doc["cases"])
    assert cli.main([*argv, "--corrupt-host"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["data_verified"] is False and doc["steps"]["read"]["ok"]
    bad = doc["cases"][0]["mismatches"][0]
    assert (bad["phase"], bad["segment"], bad["kind"]) == ("read", 0, "host")
    assert bad["found"]["kind"] == "inverted"


def test_p2p_cases_need_a_provider(capsys, tmp_path):
    dev = tmp_path / "disk"
    dev.write_bytes(bytes(4096))
    assert cli.main(["iovec", "--client", str(dev), "--case", "p2p:4K"]) == 2
    assert "--provider" in json.loads(capsys.readouterr().out)["error"]
