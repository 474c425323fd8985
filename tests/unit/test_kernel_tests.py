"""The kernel's own tests as workloads: reading their KTAP, judging a program, keeping every
subtest through results.ktap, junit and the matrix, and the guest side's time bound.

The sample outputs below are written in the formats kselftest_harness.h and KUnit's
debugfs print (Documentation/dev-tools/ktap.rst)."""

from __future__ import annotations

import argparse
import xml.etree.ElementTree as ET

import pytest

from testbed.guest_tool import kselftest as guest_kselftest
from testbed.kernel.config import Kconfig
from testbed.kernel.selftests import SUITES, Program
from testbed.results.junit import to_junit
from testbed.results.ktap import render, run_tests
from testbed.results.model import RunResult
from testbed.run.cells import Matrix, add_run
from testbed.run.ktap import matrix_ktap
from testbed.verdicts.ktap import parse, subtest_leaves
from testbed.verdicts.record import Record
from testbed.workloads.kselftest import judge_program, reclassify, running_subtest

HARNESS = """TAP version 13
1..4
# Starting 4 tests from 3 test cases.
#  RUN           vfio_dma_mapping_test.vfio_type1_iommu_anonymous.dma_map_unmap ...
Mapped HVA 0x7f0000000000 (size 0x1000) at IOVA 0x0
#            OK  vfio_dma_mapping_test.vfio_type1_iommu_anonymous.dma_map_unmap
ok 1 vfio_dma_mapping_test.vfio_type1_iommu_anonymous.dma_map_unmap
#  RUN           vfio_dma_mapping_test.iommufd_anonymous.dma_map_unmap ...
libvfio.c:40: open("/dev/iommu") failed: No such file or directory (2)
# dma_map_unmap: Test terminated by assertion
#          FAIL  vfio_dma_mapping_test.iommufd_anonymous.dma_map_unmap
not ok 2 vfio_dma_mapping_test.iommufd_anonymous.dma_map_unmap
#  RUN           vfio_dma_mapping_test.vfio_type1_iommu_anonymous_hugetlb_2mb.dma_map_unmap ...
#      SKIP      mmap() failed: Cannot allocate memory (12)
#            OK  vfio_dma_mapping_test.vfio_type1_iommu_anonymous_hugetlb_2mb.dma_map_unmap
ok 3 vfio_dma_mapping_test.vfio_type1_iommu_anonymous_hugetlb_2mb.dma_map_unmap # SKIP mmap() failed: Cannot allocate memory (12)
#  RUN           vfio_dma_map_limit_test.vfio_type1_iommu.unmap_range ...
#            OK  vfio_dma_map_limit_test.vfio_type1_iommu.unmap_range
ok 4 vfio_dma_map_limit_test.vfio_type1_iommu.unmap_range
# FAILED: 3 / 4 tests passed.
# Totals: pass:2 fail:1 xfail:0 xpass:0 skip:1 error:0
"""

KUNIT_DEBUGFS = """KTAP version 1
1..1
    KTAP version 1
    # Subtest: iommu_pt
    1..2
        KTAP version 1
        # Subtest: test_map
        ok 1 amdv1
        not ok 2 x86_64
    # test_map: pass:1 fail:1 skip:0 total:2
    not ok 1 test_map
    # test_table_ptr: EXPECTATION FAILED at drivers/iommu/generic_pt/kunit_generic_pt.h:99
    not ok 2 test_table_ptr
# iommu_pt: pass:0 fail:2 skip:0 total:2
not ok 1 iommu_pt
"""

NO_IOMMUFD = Kconfig.parse("CONFIG_PCI=y\nCONFIG_VFIO=m\nCONFIG_VFIO_PCI=m\n"
                           "# CONFIG_IOMMUFD is not set\n")
WITH_IOMMUFD = Kconfig.parse("CONFIG_PCI=y\nCONFIG_VFIO=y\nCONFIG_VFIO_PCI=y\nCONFIG_IOMMUFD=y\n"
                             "CONFIG_VFIO_CONTAINER=y\nCONFIG_VFIO_GROUP=y\n")
NO_CONTAINER = Kconfig.parse("CONFIG_PCI=y\nCONFIG_VFIO=y\nCONFIG_VFIO_PCI=y\nCONFIG_IOMMUFD=y\n"
                             "CONFIG_VFIO_GROUP=y\n")
# the CI profile kernel: VFIO device cdevs on iommufd only, no group files, no container
CDEV_ONLY = Kconfig.parse("CONFIG_PCI=y\nCONFIG_VFIO=y\nCONFIG_IOMMUFD=y\n"
                          "CONFIG_VFIO_DEVICE_CDEV=y\n# CONFIG_VFIO_GROUP is not set\n")
WITH_HUGETLBFS = Kconfig.parse("CONFIG_PCI=y\nCONFIG_VFIO=y\nCONFIG_IOMMUFD=y\n"
                               "CONFIG_VFIO_DEVICE_CDEV=y\nCONFIG_HUGETLBFS=y\n")
PROGRAM = Program("vfio_dma_mapping_test", "nvme-cmb", 600.0)


# -- reading KTAP -----------------------------------------------------------------------------
def test_the_harness_output_keeps_every_subtest_and_its_diagnostics():
    doc = parse(HARNESS)
    assert doc.complete and doc.plan == 4
    assert [t.status for t in doc.tests] == ["pass", "fail", "skip", "pass"]
    failed = doc.tests[1]
    assert 'libvfio.c:40: open("/dev/iommu") failed: No such file or directory (2)' in \
        failed.diagnostics  # stderr lines before the result line are its diagnostics
    assert "dma_map_unmap: Test terminated by assertion" in failed.diagnostics
    assert doc.tests[2].reason == "mmap() failed: Cannot allocate memory (12)"
    assert doc.counts() == {"pass": 2, "fail": 1, "skip": 1, "xfail": 0, "error": 0}


def test_kunit_debugfs_results_nest_suites_cases_and_parameters():
    (suite,) = parse(KUNIT_DEBUGFS).tests
    assert (suite.name, suite.status) == ("iommu_pt", "fail")
    assert [t.name for t in suite.subtests] == ["test_map", "test_table_ptr"]
    assert [(p.name, p.status) for p in suite.subtests[0].subtests] == [
        ("amdv1", "pass"), ("x86_64", "fail")]
    assert "EXPECTATION FAILED" in suite.subtests[1].diagnostics[0]
    leaves = [p for p, _ in subtest_leaves([suite.to_json()])]
    assert leaves == ["iommu_pt.test_map.amdv1", "iommu_pt.test_map.x86_64",
                      "iommu_pt.test_table_ptr"]


@pytest.mark.parametrize("text, expect", [
    ("TAP version 13\n1..0 # SKIP no vfio-pci\n", ("skip_all", "no vfio-pci")),
    ("TAP version 13\n1..3\nok 1 a\nBail out! cannot open /dev/vfio\n", ("bail_out",
                                                                       "cannot open /dev/vfio")),
    ("TAP version 13\n1..3\nok 1 a\n#  RUN           f.b ...\n", ("complete", False)),
    ("ok 1 x # TODO not yet\nnot ok 2 y # error setup\nok 3 z # XFAIL known\n", ("statuses", [
        "xfail", "error", "xfail"])),
])
def test_directives_and_documents_cut_short(text, expect):
    doc = parse(text)
    key, want = expect
    got = [t.status for t in doc.tests] if key == "statuses" else getattr(doc, key)
    assert got == want


# -- judging one program ----------------------------------------------------------------------
def test_a_failed_iommufd_variant_without_iommufd_is_an_unsupported_skip():
    doc = parse(HARNESS)
    assert reclassify(doc, NO_IOMMUFD) == ["CONFIG_IOMMUFD is not set"]
    assert (doc.tests[1].status, doc.tests[1].reason) == \
        ("skip", "unsupported (CONFIG_IOMMUFD is not set)")
    assert judge_program(PROGRAM, doc, {"exit_status": 1}, False, excused=True) == \
        ("ok", "2 passed, 2 skipped")
    # the program's own verdict (exit status 1) stands when nothing was excused
    assert judge_program(PROGRAM, doc, {"exit_status": 1}, False)[0] == "error"


def test_type1_variants_need_a_vfio_container():
    doc = parse(HARNESS.replace("ok 1 vfio_dma_mapping_test", "not ok 1 vfio_dma_mapping_test"))
    assert reclassify(doc, NO_CONTAINER) == [
        "neither CONFIG_VFIO_CONTAINER nor CONFIG_IOMMUFD_VFIO_CONTAINER is set"]
    assert doc.tests[0].status == "skip" and doc.tests[1].status == "fail"
    doc = parse(HARNESS.replace("ok 1 vfio_dma_mapping_test", "not ok 1 vfio_dma_mapping_test"))
    compat = Kconfig.parse("CONFIG_PCI=y\nCONFIG_IOMMUFD=y\nCONFIG_IOMMUFD_VFIO_CONTAINER=y\n"
                           "CONFIG_VFIO_GROUP=y\n")
    assert reclassify(doc, compat) == [] and doc.tests[0].status == "fail"


def test_without_group_files_only_the_iommufd_mode_is_expected_to_work():
    text = HARNESS.replace("ok 1 vfio_dma", "not ok 1 vfio_dma").replace(
        "ok 4 vfio_dma_map_limit_test.vfio_type1_iommu", "not ok 4 vfio_dma_map_limit_test."
        "iommufd_compat_type1")
    doc = parse(text)
    assert reclassify(doc, CDEV_ONLY) == ["CONFIG_VFIO_GROUP is not set"]
    assert [t.status for t in doc.tests] == ["skip", "fail", "skip", "skip"]


IOMMUFD_HUGE = """TAP version 13
1..3
#  RUN           iommufd_mock_domain.one_domain_hugepage.basic ...
# iommufd.c:1767:basic:Expected MAP_FAILED (18446744073709551615) != buf (18446744073709551615)
not ok 1 iommufd_mock_domain.one_domain_hugepage.basic
not ok 2 iommufd_ioas.mock_domain.access_domain_destory
not ok 3 iommufd_ioas.mock_domain.area_auto_iova
"""


def test_hugetlb_variants_need_hugetlbfs_and_other_failures_stay():
    doc = parse(IOMMUFD_HUGE)
    assert reclassify(doc, CDEV_ONLY) == ["CONFIG_HUGETLBFS is not set"]
    assert [(t.status, t.reason) for t in doc.tests] == [
        ("skip", "unsupported (CONFIG_HUGETLBFS is not set)"),
        ("skip", "unsupported (CONFIG_HUGETLBFS is not set)"), ("fail", "")]
    prog = SUITES["iommu"].programs[0]
    assert judge_program(prog, doc, {"exit_status": 1}, False, excused=True) == \
        ("fail", "1 of 3 failed: iommufd_ioas.mock_domain.area_auto_iova")
    # with hugetlbfs the same failures are failures
    doc = parse(IOMMUFD_HUGE)
    assert reclassify(doc, WITH_HUGETLBFS) == []
    assert [t.status for t in doc.tests] == ["fail"] * 3


def test_with_iommufd_the_same_failure_fails_the_program_naming_the_subtest():
    doc = parse(HARNESS)
    assert reclassify(doc, WITH_IOMMUFD) == []
    verdict, detail = judge_program(PROGRAM, doc, {"exit_status": 1}, False)
    assert verdict == "fail"
    assert detail == "1 of 4 failed: vfio_dma_mapping_test.iommufd_anonymous.dma_map_unmap"


@pytest.mark.parametrize("output, result, timed_out, words", [
    (HARNESS.split("ok 4")[0], {"timed_out": True}, True,
     "vfio_dma_mapping_test hung: killed after 600 s while running "
     "vfio_dma_map_limit_test.vfio_type1_iommu.unmap_range"),
    (HARNESS.split("ok 4")[0], {"signal": 11}, False,
     "vfio_dma_mapping_test crashed (signal 11) while running "
     "vfio_dma_map_limit_test.vfio_type1_iommu.unmap_range"),
    ("TAP version 13\n1..4\nok 1 a\n", {"exit_status": 1}, False,
     "vfio_dma_mapping_test stopped after 1 of 4 tests (exit status 1)"),
    ("./vfio_dma_mapping_test: error while loading shared libraries\n", {"exit_status": 127},
     False, "vfio_dma_mapping_test printed no KTAP plan (exit status 127)"),
])
def test_a_crash_or_hang_is_an_error_naming_the_program_and_subtest(output, result, timed_out,
                                                                    words):
    doc = parse(output)
    verdict, detail = judge_program(PROGRAM, doc, result, timed_out)
    assert verdict == "error" and detail.startswith(words), detail
    if "RUN" in output and "hung" in words:
        assert running_subtest(doc) == "vfio_dma_map_limit_test.vfio_type1_iommu.unmap_range"


def test_a_program_that_skips_itself_is_not_judged():
    doc = parse("TAP version 13\n1..0 # SKIP No driver found for device 0000:03:00.0\n")
    assert judge_program(PROGRAM, doc, {"exit_status": 4}, False) == \
        (None, "skipped: No driver found for device 0000:03:00.0")


def test_suites_say_which_option_they_lack():
    iommu = SUITES["iommu"]
    assert iommu.unsupported(WITH_IOMMUFD) == "CONFIG_IOMMUFD_TEST is not set"
    assert iommu.unsupported(None) is None  # unknown config: run and let it say
    vfio = SUITES["vfio"]
    setup = next(p for p in vfio.programs if p.name == "vfio_iommufd_setup_test")
    assert vfio.unsupported(NO_IOMMUFD) is None
    assert vfio.unsupported(NO_IOMMUFD, setup) == "CONFIG_IOMMUFD is not set"


# -- every subtest reaches the results ------------------------------------------------------
def program_record(text: str, config: Kconfig | None = None) -> Record:
    doc = parse(text)
    excused = bool(reclassify(doc, config))
    status = 1 if "not ok" in text else 0
    verdict, detail = judge_program(PROGRAM, doc, {"exit_status": status}, False, excused)
    return Record("kselftest:vfio", test=PROGRAM.name, client="nvme0", predicted="ok",
                  observed=verdict, detail=detail, subtests=[t.to_json() for t in doc.tests])


def test_results_ktap_nests_workload_program_and_subtests():
    result = RunResult("switch-cmb-intel-iommu", finished=True,
                       workloads=[program_record(HARNESS, WITH_IOMMUFD)])
    text = render(run_tests(result))
    assert "    not ok 2 vfio_dma_mapping_test.iommufd_anonymous.dma_map_unmap" in text
    assert '    # libvfio.c:40: open("/dev/iommu") failed: No such file or directory (2)' in text
    assert ("    ok 3 vfio_dma_mapping_test.vfio_type1_iommu_anonymous_hugetlb_2mb."
            "dma_map_unmap # SKIP mmap() failed") in text
    assert "  not ok 1 vfio_dma_mapping_test # 1 of 4 failed:" in text
    assert text.rstrip().endswith("not ok 1 kselftest:vfio # 1 of 1 failed")


def test_junit_has_a_case_per_subtest():
    result = RunResult("t", finished=True, workloads=[program_record(HARNESS, NO_IOMMUFD)])
    suite = ET.fromstring(to_junit(result))
    cases = suite.findall("testcase")
    assert len(cases) == 4 and suite.get("tests") == "4"
    assert {c.get("classname") for c in cases} == {"t.kselftest:vfio.vfio_dma_mapping_test"}
    skipped = [c.find("skipped").get("message") for c in cases if c.find("skipped") is not None]
    assert "unsupported (CONFIG_IOMMUFD is not set)" in skipped
    assert suite.get("failures") == "0" and suite.get("skipped") == "2"


def test_a_hang_is_an_error_case_naming_the_program():
    doc = parse(HARNESS.split("ok 4")[0])
    verdict, detail = judge_program(PROGRAM, doc, {"timed_out": True}, True)
    rec = Record("kselftest:vfio", test=PROGRAM.name, predicted="ok", observed=verdict,
                 detail=detail, subtests=[t.to_json() for t in doc.tests])
    suite = ET.fromstring(to_junit(RunResult("t", finished=True, workloads=[rec])))
    errors = [c for c in suite.findall("testcase") if c.find("error") is not None]
    assert [c.get("name") for c in errors] == ["vfio_dma_mapping_test"]
    assert "hung" in errors[0].find("error").get("message")
    assert "not ok 1 vfio_dma_mapping_test # ERROR vfio_dma_mapping_test hung" in render(
        run_tests(RunResult("t", finished=True, workloads=[rec])))


# -- the matrix: a subtest that passed on the baseline and fails later ----------------------
def test_the_matrix_names_a_regressed_subtest():
    m = Matrix(kernels=[{"label": "base"}, {"label": "patched"}], topologies=["t"])
    add_run(m, "t", "base", RunResult("t", finished=True, workloads=[
        program_record(HARNESS.replace("not ok 2", "ok 2"), WITH_IOMMUFD)]), "t/base")
    add_run(m, "t", "patched", RunResult("t", finished=True, workloads=[
        program_record(HARNESS, WITH_IOMMUFD)]), "t/patched")
    (reg,) = m.regressions()
    assert reg.kind == "subtest" and reg.workload == "kselftest:vfio/vfio_dma_mapping_test"
    assert reg.reason == ("subtest vfio_dma_mapping_test.iommufd_anonymous.dma_map_unmap: "
                          "passed on base, fail on patched")
    assert m.status == 1
    text = matrix_ktap(m)
    assert "regression: t kselftest:vfio/vfio_dma_mapping_test: base pass, patched fail" in text


def test_an_old_failure_that_stays_is_no_regression_but_a_new_one_is():
    m = Matrix(kernels=[{"label": "base"}, {"label": "patched"}], topologies=["t"])
    add_run(m, "t", "base", RunResult("t", finished=True, workloads=[
        program_record(HARNESS, WITH_IOMMUFD)]), "t/base")
    add_run(m, "t", "patched", RunResult("t", finished=True, workloads=[
        program_record(HARNESS, WITH_IOMMUFD)]), "t/patched")
    assert m.regressions() == []
    worse = HARNESS.replace("ok 4 vfio_dma_map_limit", "not ok 4 vfio_dma_map_limit")
    m.cells = [c for c in m.cells if c.kernel == "base"]
    add_run(m, "t", "patched", RunResult("t", finished=True, workloads=[
        program_record(worse, WITH_IOMMUFD)]), "t/patched")
    assert [r.reason.split(":")[0] for r in m.regressions()] == [
        "subtest vfio_dma_map_limit_test.vfio_type1_iommu.unmap_range"]


# -- the guest side's bound -------------------------------------------------------------------
def test_the_guest_kills_a_hung_program_and_everything_it_started(tmp_path):
    script = tmp_path / "hang"
    script.write_text("#!/bin/sh\necho 'TAP version 13'\necho '1..1'\n"
                      "echo '#  RUN           f.t ...'\nsleep 30 &\nsleep 30\n")
    script.chmod(0o755)
    out, status, sig, timed_out, seconds = guest_kselftest.run_program(
        str(tmp_path), "hang", [], {}, 1.0)
    assert timed_out and seconds < 10 and sig == 9 and status is None
    assert "RUN           f.t" in out


def test_the_guest_reports_a_program_that_cannot_start(tmp_path):
    args = argparse.Namespace(program="missing", module=[], env=[], hugepages=0, vfio=None,
                              dir=str(tmp_path), arg=[], timeout=5.0, unsafe_interrupts=False)
    doc = guest_kselftest.kselftest(args)
    assert doc["exit_status"] is None and doc["output"].startswith("cannot start")


# -- KUnit: on only when the kernel says so; a suite's cases kept ----------------------------
def test_kunit_is_off_without_kunit_enable_when_the_config_defaults_it_off():
    from testbed.workloads.kselftest import kunit_off
    off = Kconfig.parse("CONFIG_PCI=y\nCONFIG_KUNIT=y\n# CONFIG_KUNIT_DEFAULT_ENABLED is not set\n")
    assert "kunit.enable=1" in kunit_off(off, "console=ttyS0 root=/dev/vda")
    assert kunit_off(off, "console=ttyS0 kunit.enable=1") is None
    on = Kconfig.parse("CONFIG_PCI=y\nCONFIG_KUNIT=y\nCONFIG_KUNIT_DEFAULT_ENABLED=y\n")
    assert kunit_off(on, "quiet") is None
    assert kunit_off(on, "kunit.enable=0") == "the kernel was booted with kunit.enable=0"


def test_kunit_is_off_when_the_config_does_not_autorun_it():
    """allnoconfig leaves the default-y KUNIT_AUTORUN_ENABLED off (the kunit profile's first
    real build, 7.3.4): KUnit then registers the suites and never runs them."""
    from testbed.workloads.kselftest import kunit_off
    no_run = Kconfig.parse("CONFIG_PCI=y\nCONFIG_KUNIT=y\nCONFIG_KUNIT_DEFAULT_ENABLED=y\n"
                           "# CONFIG_KUNIT_AUTORUN_ENABLED is not set\n")
    assert "kunit.autorun=1" in kunit_off(no_run, "console=ttyS0")
    assert kunit_off(no_run, "console=ttyS0 kunit.autorun=1") is None
    assert kunit_off(no_run, "kunit.autorun=1 kunit.enable=0") == \
        "the kernel was booted with kunit.enable=0"
    older = Kconfig.parse("CONFIG_PCI=y\nCONFIG_KUNIT=y\nCONFIG_KUNIT_DEFAULT_ENABLED=y\n")
    assert kunit_off(older, "quiet") is None  # a kernel without the option autoruns


def test_a_suite_that_never_ran_is_an_error_not_a_pass():
    """What 7.3.4's debugfs printed for a registered suite that never ran: the plan, no case
    line, and the suite's own "ok" (its status starts as success)."""
    from testbed.workloads.kselftest import kunit_record
    text = ("KTAP version 1\n1..1\n    KTAP version 1\n    # Subtest: amdv1_fmt_test\n"
            "    1..11\nok 1 amdv1_fmt_test\n")
    rec = kunit_record("kunit", "amdv1_fmt_test", text)
    assert (rec.predicted, rec.observed) == ("ok", "error")
    assert "ran no test case" in rec.detail


def test_a_kunit_suite_is_one_record_with_every_case():
    from testbed.workloads.kselftest import kunit_record
    rec = kunit_record("kunit", "iommu_pt", KUNIT_DEBUGFS)
    assert (rec.test, rec.predicted, rec.observed) == ("iommu_pt", "ok", "fail")
    assert rec.detail == "2 of 3 failed: test_map.x86_64, test_table_ptr"
    good = kunit_record("kunit", "iommu_pt", KUNIT_DEBUGFS.replace("not ok", "ok"))
    assert (good.observed, good.detail) == ("ok", "3 passed, 0 skipped")
    skipped = kunit_record("kunit", "s", "KTAP version 1\n1..1\nok 1 s # SKIP no hardware\n")
    assert (skipped.judged, skipped.detail) == (False, "skipped: no hardware")


# -- the run's report: kernel tests in their own section, not in the pair table -------------
def test_report_lists_kernel_tests_with_their_subtests():
    from testbed.results.summary import summary
    from testbed.results.writer import render_report, render_report_html
    skip = Record("kselftest:vfio", test="vfio_pci_driver_test",
                  detail="skipped: the topology has no igb for vfio_pci_driver_test")
    result = RunResult("t", finished=True, workloads=[
        program_record(HARNESS, WITH_IOMMUFD), skip,
        Record("p2p-copy", "nvme0", "nvme1", "ok", observed="ok")])
    md = render_report(result)
    section = md.split("## Kernel tests", 1)[1]
    assert "- **kselftest:vfio vfio_dma_mapping_test** (nvme0): fail ✗ — 1 of 4 failed" in section
    assert "  - fail vfio_dma_mapping_test.iommufd_anonymous.dma_map_unmap" in section
    assert ("  - skip vfio_dma_mapping_test.vfio_type1_iommu_anonymous_hugetlb_2mb.dma_map_unmap"
            " — mmap() failed") in section
    assert "not run — skipped: the topology has no igb" in section
    verdicts = md.split("## Verdicts", 1)[1].split("## Why", 1)[0]
    assert "p2p-copy" in verdicts and "kselftest" not in verdicts
    html = render_report_html(result)
    assert 'data-test="vfio_dma_mapping_test"' in html
    assert "libvfio.c:40: open(&#34;/dev/iommu&#34;) failed" in html  # a failure's diagnostics
    table = summary(result)
    assert "kselftest:vfio vfio_dma_mapping_test" in table and "1 of 4 failed" in table


def test_a_program_that_no_longer_runs_is_one_regression_and_a_skip_is_no_error():
    m = Matrix(kernels=[{"label": "base"}, {"label": "patched"}], topologies=["t"])
    add_run(m, "t", "base", RunResult("t", finished=True, workloads=[
        program_record(HARNESS.replace("not ok 2", "ok 2"), WITH_IOMMUFD),
        Record("kselftest:vfio", test="vfio_pci_driver_test", detail="skipped: no igb")]),
        "t/base")
    add_run(m, "t", "patched", RunResult("t", finished=True, workloads=[
        Record("kselftest:vfio", test=PROGRAM.name,
               detail="unsupported (CONFIG_VFIO_PCI is not set)"),
        Record("kselftest:vfio", test="vfio_pci_driver_test", detail="skipped: no igb")]),
        "t/patched")
    cells = {(c.workload, c.kernel): c.verdict for c in m.cells}
    assert cells[("kselftest:vfio/vfio_pci_driver_test", "base")] == "skip"
    assert cells[("kselftest:vfio/vfio_dma_mapping_test", "patched")] == "unsupported"
    (reg,) = m.regressions()
    assert reg.kind == "verdict" and reg.now == "unsupported"
    assert reg.reason.startswith("was ok, now unsupported: unsupported (CONFIG_VFIO_PCI")


def test_the_hmm_suite_builds_the_kernels_own_test_module_from_its_source(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "test_hmm.c").write_text("/* the kernel's */\n")
    (lib / "test_hmm_uapi.h").write_text("/* uapi */\n")
    (lib / "Makefile").write_text("obj-y += everything.o\n")  # the directory's: not taken
    mod = SUITES["hmm"].module(tmp_path)
    assert mod is not None and mod.name == "test_hmm"
    assert [p.name for p in mod.files()] == ["test_hmm.c", "test_hmm_uapi.h"]
    assert mod.kbuild() == "obj-m += test_hmm.o\n"
    assert SUITES["vfio"].module(tmp_path) is None
    # the build cache follows the source's files
    before = mod.digest()
    (lib / "test_hmm.c").write_text("/* patched */\n")
    assert mod.digest() != before
