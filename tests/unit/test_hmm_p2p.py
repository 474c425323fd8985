"""hmm-p2p: the judge of the module's per-page report, the module's ABI as the guest tool
reads it, and how the testbed decides whether (and against what) it can build the module.

tests/unit/data/hmm-p2p/*.json are real guest-tool documents from the image kernel
(7.3.4+deb13): ``bus`` on switch-cmb, ``host-bridge`` on rootports-cmb-zen, ``refused`` on
rootports-cmb, ``iova`` on rootports-cmb-zen-intel-iommu (host bridge, translating)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from testbed.guest_tool import hmmp2p
from testbed.image.buildroot import is_debian_release, kernel_build_env
from testbed.kernel.extmod import (HMM_P2P_TEST, ModuleUnsupported, kernel_modules_dir,
                                   parse_symvers, tree_env, vermagic)
from testbed.kernel.config import Kconfig
from testbed.kernel.resolve import KernelSpec
from testbed.qemu.probe import CpuInfo
from testbed.results.ktap import record_test, render
from testbed.spec import load_topology
from testbed.verdicts.hmm import judge_hmm
from testbed.workloads.base import Context, WorkloadOptions
from testbed.workloads.hmmp2p import HmmP2P

DATA = Path(__file__).parent / "data" / "hmm-p2p"


def doc(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text())


@pytest.mark.parametrize("name, map_type, translating, verdict", [
    ("bus", "bus-address", False, "ok"),
    ("host-bridge", "host-bridge", False, "ok"),
    ("iova", "host-bridge", True, "ok"),
    ("refused", "not-supported", False, "rejected"),
])
def test_real_reports_are_judged_as_the_oracle_says(name, map_type, translating, verdict):
    j = judge_hmm(doc(name), map_type, translating)
    assert (j.verdict, j.map_type, j.problems) == (verdict, map_type, [])


def test_translation_is_checked_both_ways():
    # an IOVA where the physical address was due, and the physical address under an IOMMU
    assert any("not its physical address" in p
               for p in judge_hmm(doc("iova"), "host-bridge", False).problems)
    assert any("under a translating IOMMU" in p
               for p in judge_hmm(doc("host-bridge"), "host-bridge", True).problems)


def test_a_bus_address_off_by_a_page_names_the_page():
    d = doc("bus")
    d["map"]["pages"][2]["dma"] += 4096
    (problem,) = judge_hmm(d, "bus-address", False).problems
    assert problem.startswith("page 2 (p2pmem): DMA address") and "PCI bus address" in problem


def test_a_bus_page_outside_the_providers_bars():
    d = doc("bus")
    d["map"]["pages"][1]["expected_bus"] = None
    assert "in none of the provider's BARs" in judge_hmm(d, "bus-address", False).problems[0]


def test_mixed_p2p_states_are_an_error():
    d = doc("bus")
    d["map"]["pages"][3]["state"] = "refused"
    j = judge_hmm(d, "bus-address", False)
    assert j.verdict == "error" and "bus x3" in j.detail and "refused x1" in j.detail


def test_a_host_page_beside_p2pmem_must_be_mapped_plainly():
    d = doc("refused")
    d["map"]["pages"][0]["state"] = "failed"
    j = judge_hmm(d, "not-supported", False)
    assert j.verdict == "rejected" and "page 0 (host): failed" in j.problems[0]


def test_the_unmap_path_is_checked():
    d = doc("bus")
    d["unmap"]["unmapped"] = 5
    d["unmap"]["pages"][1].remove("unmapped")
    d["unmap"]["pages"][4].remove("cleared")
    problems = judge_hmm(d, "bus-address", False).problems
    assert "unmapped 5 pages, 6 were mapped" in problems[0]
    assert "page 1 was mapped and not unmapped" in problems[1]
    assert "page 4 kept DMA flags" in problems[2]


def test_a_refused_page_must_not_be_unmapped():
    d = doc("refused")
    d["unmap"]["pages"][2].append("unmapped")
    assert "page 2 was never mapped, yet unmapped" in judge_hmm(
        d, "not-supported", False).problems[0]


def test_the_notifier_must_unmap_the_mapped_p2p_pages():
    d = doc("host-bridge")
    d["invalidate"]["invalidated"] = 0
    d["invalidate"]["pages"][3].remove("invalidated")
    problems = judge_hmm(d, "host-bridge", False).problems
    assert "the notifier unmapped 0 pages, 4 P2P pages were mapped" in problems[0]
    assert "P2P page 3 was not unmapped by the notifier" in problems[1]
    d = doc("refused")
    d["invalidate"]["invalidated"] = 1
    assert "0 P2P pages were mapped" in judge_hmm(d, "not-supported", False).problems[0]


@pytest.mark.parametrize("change, words", [
    (lambda d: d["map"].update(alloc_ret=-95), "hmm_dma_map_alloc() failed: -95"),
    (lambda d: d["map"].update(fault_ret=-14), "hmm_range_fault() failed: -14"),
    (lambda d: d.pop("map") and d.update(stage="allocate", error="[Errno 12] no memory"),
     "stopped at allocate: [Errno 12]"),
])
def test_early_failures_are_errors(change, words):
    d = doc("bus")
    change(d)
    j = judge_hmm(d, "bus-address", False)
    assert j.verdict == "error" and words in j.detail
    assert judge_hmm(None, "bus-address", False).verdict == "error"


# -- the module's ABI as the guest tool reads it --------------------------------------------
C_TYPES = {"__u64": "Q", "__s64": "q", "__u32": "I", "__s32": "i", "__u16": "H", "__u8": "B"}


def c_struct_format(name: str) -> str:
    header = (kernel_modules_dir() / "hmm_p2p_test" / "hmm_p2p_test.h").read_text()
    body = re.search(r"struct %s \{(.*?)\};" % name, header, re.S).group(1)
    out = ""
    for line in body.splitlines():
        line = re.sub(r"/\*.*?\*/", "", line).strip()
        m = re.match(r"(__[us]\d+)\s+([\w, ]+);", line)
        if m:
            out += C_TYPES[m.group(1)] * len(m.group(2).split(","))
    return "<" + out


def test_the_guest_tool_reads_the_headers_structures():
    assert hmmp2p.REQ.format == c_struct_format("hmm_p2p_req")
    assert hmmp2p.PAGE_REC.format == c_struct_format("hmm_p2p_page")
    assert (hmmp2p.REQ.size, hmmp2p.PAGE_REC.size) == (80, 32)
    assert len(hmmp2p.REQ_FIELDS) == len(hmmp2p.REQ.format) - 1


def test_the_guest_tool_knows_every_state_and_bit_of_the_header():
    header = (kernel_modules_dir() / "hmm_p2p_test" / "hmm_p2p_test.h").read_text()
    states = re.findall(r"^\tHMM_P2P_(\w+)[ ,=]", header, re.M)
    assert [s.lower().replace("_", "-") for s in states] == [
        "none", "plain", "host-bridge", "bus", "refused", "failed"]
    assert len(states) == len(hmmp2p.STATES)
    bits = re.findall(r"#define HMM_P2P_B_(\w+)\s+\(1U << (\d+)\)", header)
    assert [(name.lower(), int(n)) for name, n in bits] == [
        (name, i) for i, name in enumerate(hmmp2p.BITS)]
    ioc = dict(re.findall(r"#define HMM_P2P_IOC_(\w+)\s+_IOWR\('H', (0x\w+)", header))
    assert hmmp2p.IOC_MAP == hmmp2p._iowr(int(ioc["MAP"], 16), 80) == 0xC0504870
    assert hmmp2p.IOC_UNMAP & 0xFF == int(ioc["UNMAP"], 16)


def test_bus_addresses_come_from_the_bar_registers():
    bars = [{"bar": 2, "start": 0x104000000, "end": 0x107ffffff, "bus": 0x80000000}]
    assert hmmp2p.expected_bus(bars, 0x104001000) == 0x80001000
    assert hmmp2p.expected_bus(bars, 0x108000000) is None
    assert hmmp2p.parse_bdf("0000:0a:1f.7") == (0, 10, 0xFF)
    with pytest.raises(hmmp2p.UsageError):
        hmmp2p.parse_bdf("0a:00")


# -- can the kernel take the module, and against what is it built -------------------------
SYMBOLS = {s: "vmlinux" for s in HMM_P2P_TEST.needs_symbols}
FULL = "CONFIG_MODULES=y\nCONFIG_HMM_MIRROR=y\nCONFIG_PCI_P2PDMA=y\n"


@pytest.mark.parametrize("config, symbols, why", [
    (FULL, SYMBOLS, None),
    (FULL.replace("CONFIG_MODULES=y", ""), SYMBOLS, "CONFIG_MODULES is not set"),
    (FULL.replace("CONFIG_HMM_MIRROR=y", "# CONFIG_HMM_MIRROR is not set"), SYMBOLS,
     "CONFIG_HMM_MIRROR is not set"),
    (FULL.replace("CONFIG_PCI_P2PDMA=y", ""), SYMBOLS, "CONFIG_PCI_P2PDMA is not set"),
    (FULL, {"hmm_range_fault": "vmlinux"}, "the kernel exports no hmm_dma_map_alloc"),
])
def test_why_a_kernel_cannot_take_the_module(config, symbols, why):
    got = HMM_P2P_TEST.unsupported(Kconfig.parse(config), symbols)
    assert got == why if why is None else got.startswith(why)


def test_module_symvers_and_vermagic():
    text = "0x0\thmm_dma_map_pfn\tvmlinux\tEXPORT_SYMBOL_GPL\t\n0x1\tnvme_x\tdrivers/nvme\t\t\n"
    assert parse_symvers(text) == {"hmm_dma_map_pfn": "vmlinux", "nvme_x": "drivers/nvme"}
    assert vermagic(b"x\0vermagic=7.3.4+deb13-amd64 SMP preempt mod_unload \0") \
        .split()[0] == "7.3.4+deb13-amd64"
    assert vermagic(b"no modinfo") is None


def test_the_module_source_is_gpl_and_complete():
    files = {p.name for p in HMM_P2P_TEST.files()}
    assert files == {"Kbuild", "hmm_p2p_test.c", "hmm_p2p_test.h"}
    for p in HMM_P2P_TEST.files():
        assert "SPDX-License-Identifier: GPL-2.0" in p.read_text().splitlines()[0]


def fake_tree(tmp: Path, release: str, config: str = FULL) -> Path:
    (tmp / "include/config").mkdir(parents=True)
    (tmp / "include/config/kernel.release").write_text(release + "\n")
    (tmp / "Makefile").write_text("# kernel\n")
    (tmp / ".config").write_text(config)
    (tmp / "Module.symvers").write_text("".join(f"0x0\t{s}\tvmlinux\tEXPORT_SYMBOL\t\n"
                                                for s in SYMBOLS))
    return tmp


def spec_of(tree: Path, release: str) -> KernelSpec:
    return KernelSpec(spec=str(tree), kind="build-tree", path=tree,
                      image_file=tree / "arch/x86/boot/bzImage", release=release,
                      config_file=tree / ".config")


def test_a_built_tree_is_built_against_with_the_hosts_compiler(tmp_path):
    tree = fake_tree(tmp_path, "7.3.0-tb")
    env = kernel_build_env(spec_of(tree, "7.3.0-tb"), "7.3.0-tb")
    assert env.root is None and env.kdir == str(tree.resolve()) and env.release == "7.3.0-tb"
    assert env.make_argv("/x", "modules")[-3:] == [str(tree.resolve()), "M=/x", "modules"]
    assert env.identity == tree_env(tree, "7.3.0-tb").identity
    with pytest.raises(ModuleUnsupported, match="the guest runs 7.3.1"):
        kernel_build_env(spec_of(tree, "7.3.0-tb"), "7.3.1")


def test_a_kernel_with_neither_tree_nor_debian_release_is_unsupported():
    assert is_debian_release("7.3.4+deb13-amd64") and is_debian_release("6.1.0-40-amd64")
    assert not is_debian_release("7.3.0-tb") and not is_debian_release("7.3.4+deb13-amd64x")
    with pytest.raises(ModuleUnsupported, match="no build tree for kernel 7.3.0-tb"):
        kernel_build_env(None, "7.3.0-tb")


def test_the_workload_reports_an_unsupported_kernel_without_building(tmp_path):
    tree = fake_tree(tmp_path, "7.3.0-tb", FULL.replace("CONFIG_HMM_MIRROR=y", ""))
    guest = SimpleNamespace(names={}, inventory={"kernel": {"release": "7.3.0-tb",
                                                            "p2pdma": True}})
    ctx = Context(guest=guest, topology=load_topology("switch-cmb"),
                  cpu=CpuInfo("qemu64", "AuthenticAMD", 15),
                  options=WorkloadOptions(kernel=spec_of(tree, "7.3.0-tb")))
    (rec,) = HmmP2P().run(ctx)
    assert rec.detail == "unsupported (CONFIG_HMM_MIRROR is not set)"
    assert not rec.judged and rec.passed
    assert "ok 1 hmm-p2p # SKIP unsupported (CONFIG_HMM_MIRROR is not set)" in render(
        [record_test(rec)])

