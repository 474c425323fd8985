"""Topology -> QEMU argv (testbed.qemu.cmdline) and argv -> shell script (testbed.qemu.script).

Pure: QEMU is never started here.  The script tests run the generated text under ``sh`` with
the exec'd QEMU swapped for ``printf`` (by sed), which proves the quoting reproduces the argv
byte for byte.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testbed.qemu.backing import create_backing_files
from testbed.machines import X86_64
from testbed.qemu.cmdline import backing_files, iommu_cmdline, machine_argv, run_dir_files
from testbed.qemu.script import to_script
from testbed.spec import load_topology
from testbed.spec.parse import parse
from testbed.spec.units import MiB
from testbed.spec.yamlsource import load

RUN = Path("/run/x")
SH = shutil.which("sh") or "/bin/sh"


def topo_of(text: str, base_dir: Path = Path("/spec")):
    return parse(load(textwrap.dedent(text), "t.yaml"), "t.yaml", base_dir)


def devices(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]


def props(value: str) -> dict[str, str]:
    """'drv,a=1,b=2' -> {'driver': 'drv', 'a': '1', 'b': '2'} (no ',,' escapes inside)."""
    first, *rest = value.split(",")
    return {"driver": first, **dict(kv.split("=", 1) for kv in rest)}


# -- golden argv --------------------------------------------------------------------------

COMMON = ["-machine", "q35", "-accel", "tcg", "-cpu", "qemu64", "-m", "1024M", "-smp", "2",
          "-nodefaults", "-no-user-config", "-display", "none"]


def test_switch_cmb_argv():
    argv = machine_argv(load_topology("switch-cmb"), "qemu", RUN, "tcg")
    assert argv == ["qemu", *COMMON,
                    "-device", "pcie-root-port,id=rp0,bus=pcie.0,chassis=1,slot=0",
                    "-device", "x3130-upstream,id=sw0,bus=rp0",
                    "-device", "xio3130-downstream,id=sw0-dp0,bus=sw0,chassis=2,slot=0",
                    "-device", "nvme,id=nvme0,serial=nvme0,bus=sw0-dp0,cmb_size_mb=64",
                    "-drive", "file=/run/x/nvme0-ns1.img,if=none,id=tb-nvme0-ns1,format=raw,"
                              "cache=writeback",
                    "-device", "nvme-ns,drive=tb-nvme0-ns1,bus=nvme0,nsid=1",
                    "-device", "xio3130-downstream,id=sw0-dp1,bus=sw0,chassis=3,slot=0",
                    "-device", "nvme,id=nvme1,serial=nvme1,bus=sw0-dp1,cmb_size_mb=64",
                    "-drive", "file=/run/x/nvme1-ns1.img,if=none,id=tb-nvme1-ns1,format=raw,"
                              "cache=writeback",
                    "-device", "nvme-ns,drive=tb-nvme1-ns1,bus=nvme1,nsid=1"]


def test_acs_false_is_disable_acs_on_that_root_port_only():
    topo = topo_of("""
        pcie:
          - root_port: rp0
            acs: false
          - root_port: rp1
        """)
    assert devices(machine_argv(topo, "qemu", RUN, "tcg")) == [
        "pcie-root-port,id=rp0,bus=pcie.0,chassis=1,slot=0,disable-acs=on",
        "pcie-root-port,id=rp1,bus=pcie.0,chassis=2,slot=0"]


def test_nvme_pmr_argv():
    topo = load_topology("nvme-pmr")
    argv = machine_argv(topo, "qemu", RUN, "tcg")
    i = argv.index("-object")
    assert argv[i:i + 4] == [
        "-object", "memory-backend-file,id=tb-nvme0-pmr,share=on,mem-path=/run/x/nvme0-pmr.img,"
                   "size=16777216",
        "-device", "nvme,id=nvme0,serial=nvme0,bus=sw0-dp0,cmb_size_mb=16,pmrdev=tb-nvme0-pmr"]
    assert argv.count("-object") == 1  # nvme1 has no PMR
    assert "nvme,id=nvme1,serial=nvme1,bus=sw0-dp1" in devices(argv)
    assert [(b.path, b.size, b.role) for b in backing_files(topo, RUN)] == [
        (RUN / "nvme0-ns1.img", 1 << 30, "namespace"), (RUN / "nvme0-pmr.img", 16 * MiB, "PMR"),
        (RUN / "nvme1-ns1.img", 1 << 30, "namespace")]


def test_every_spec_node_is_one_device_on_its_parent_bus():
    topo = load_topology("fabric-large")
    argv = machine_argv(topo, "qemu", RUN, "tcg")
    by_id = {p["id"]: p for p in map(props, devices(argv)) if "id" in p}
    parents = topo.parents()
    for node in topo.nodes():
        parent = parents[node.name]
        assert by_id[node.name]["bus"] == (parent.name if parent else "pcie.0")
    # every device's bus is defined before it is used (QEMU needs that order)
    seen = {"pcie.0"}
    for p in map(props, devices(argv)):
        assert p["bus"] in seen, p
        seen.add(p.get("id"))


@pytest.mark.parametrize("name", ["switch-cmb", "fabric-large", "rootports-cmb"])
def test_chassis_numbers_unique(name):
    argv = machine_argv(load_topology(name), "qemu", RUN, "tcg")
    ports = [props(d) for d in devices(argv)
             if d.startswith(("pcie-root-port,", "xio3130-downstream,"))]
    chassis = [p["chassis"] for p in ports]
    assert len(chassis) == len(set(chassis)) == len(ports) > 0
    assert all(p["slot"] == "0" for p in ports)


def test_chassis_numbers_unique_for_many_ports():
    entries = "\n".join(f"  - {{root_port: rp{i}, device: {{switch: sw{i}, downstream: "
                        f"[{', '.join(f'{{nvme: n{i}x{j}}}' for j in range(8))}]}}}}"
                        for i in range(8))
    topo = topo_of("pcie:\n" + entries + "\n")
    chassis = [props(d)["chassis"] for d in devices(machine_argv(topo, "qemu", RUN, "tcg"))
               if "chassis=" in d]
    assert len(chassis) == 8 + 64 and len(set(chassis)) == len(chassis)


# -- vIOMMU -------------------------------------------------------------------------------

IOMMU_DEVICE = {"intel": "intel-iommu,id=tb-viommu",
                "amd": "amd-iommu,id=tb-viommu,dma-remap=on",  # QEMU 11.x remaps device DMA
                "virtio": "virtio-iommu-pci,id=tb-viommu,bus=pcie.0"}


@pytest.mark.parametrize("model", ["intel", "amd", "virtio"])
@pytest.mark.parametrize("mode", ["strict", "passthrough"])
def test_viommu_comes_before_every_pci_device(model, mode):
    topo = topo_of(f"""
        iommu: {{model: {model}, mode: {mode}}}
        pcie:
          - root_port: rp0
            device:
              switch: sw0
              downstream: [{{nvme: nvme0, cmb: 64M}}, {{nvme: nvme1, cmb: 64M}}]
          - {{nvme: nvme2}}
        """)
    argv = machine_argv(topo, "qemu", RUN, "tcg")
    devs = devices(argv)
    assert devs[0] == IOMMU_DEVICE[model]
    assert sum("tb-viommu" in d for d in devs) == 1
    assert argv.index("-device") == argv.index(IOMMU_DEVICE[model]) - 1
    assert "-machine" in argv and argv[argv.index("-machine") + 1] == "q35"


def test_no_viommu_without_model():
    argv = machine_argv(load_topology("switch-cmb"), "qemu", RUN, "tcg")
    assert not any("iommu" in a for a in argv)
    assert iommu_cmdline(load_topology("switch-cmb")) == ()


@pytest.mark.parametrize("name, words", [
    ("switch-cmb-intel-iommu", ("intel_iommu=on", "iommu.strict=1", "iommu.passthrough=0")),
    ("switch-cmb-iommu-pt", ("intel_iommu=on", "iommu=pt")),
    ("switch-cmb-virtio-iommu", ("iommu.strict=1", "iommu.passthrough=0")),
    ("switch-cmb-amd-iommu", ("iommu.strict=1", "iommu.passthrough=0")),
    ("switch-cmb-amd-iommu-pt", ("iommu=pt",)),
])
def test_iommu_kernel_cmdline_words(name, words):
    assert iommu_cmdline(load_topology(name)) == words


@pytest.mark.parametrize("model", ["intel", "amd", "virtio"])
def test_iommu_kernel_cmdline_for_every_model_and_mode(model):
    strict = iommu_cmdline(topo_of(f"iommu: {model}\npcie: []\n"))
    pt = iommu_cmdline(topo_of(f"iommu: {{model: {model}, mode: passthrough}}\npcie: []\n"))
    assert "iommu.strict=1" in strict and "iommu.passthrough=0" in strict
    assert "iommu=pt" in pt and "iommu.strict=1" not in pt
    if model == "intel":
        assert "intel_iommu=on" in strict and "intel_iommu=on" in pt
    # the AMD driver has no amd_iommu=on (it says "AMD-Vi: Unknown option - 'on'")
    assert not any(w.startswith("amd_iommu=") for w in strict + pt)
    assert X86_64.viommu_models == ("none", "intel", "amd", "virtio")


def test_kvm_with_interrupt_remapping_iommu():
    intel = topo_of("iommu: intel\npcie: []\n")
    argv = machine_argv(intel, "qemu", RUN, "kvm")
    assert argv[argv.index("-machine") + 1] == "q35,kernel-irqchip=split"
    assert "intel-iommu,id=tb-viommu,intremap=on" in argv
    amd = machine_argv(topo_of("iommu: amd\npcie: []\n"), "qemu", RUN, "kvm")
    assert amd[amd.index("-machine") + 1] == "q35,kernel-irqchip=split"
    virtio = machine_argv(topo_of("iommu: virtio\npcie: []\n"), "qemu", RUN, "kvm")
    assert virtio[virtio.index("-machine") + 1] == "q35"
    with pytest.raises(AssertionError):
        machine_argv(intel, "qemu", RUN, "auto")


# -- NVMe details and escaping --------------------------------------------------------------

def test_commas_in_paths_and_serials_are_doubled(tmp_path):
    d = tmp_path / "a,b"
    d.mkdir()
    topo = topo_of("""
        pcie:
          - nvme: nvme0
            serial: "S,1"
            pmr: {size: 4K, file: "a,b/p,mr.img", create: true}
            namespaces: [{size: 1M, file: "a,b/ns,1.img", create: true}]
        """, base_dir=tmp_path)
    argv = machine_argv(topo, "qemu", Path("/run/c,d"), "tcg")
    esc = str(d).replace(",", ",,")
    assert f"memory-backend-file,id=tb-nvme0-pmr,share=on,mem-path={esc}/p,,mr.img,size=4096" in argv
    assert "nvme,id=nvme0,serial=S,,1,bus=pcie.0,pmrdev=tb-nvme0-pmr" in argv
    assert f"file={esc}/ns,,1.img,if=none,id=tb-nvme0-ns1,format=raw,cache=writeback" in argv
    # run-directory paths are escaped too
    plain = topo_of("pcie: [{nvme: n0}]\n")
    assert ("file=/run/c,,d/n0-ns1.img,if=none,id=tb-n0-ns1,format=raw,cache=writeback"
            in machine_argv(plain, "qemu", Path("/run/c,d"), "tcg"))


def test_namespaces_and_block_sizes():
    topo = topo_of("""
        pcie:
          - nvme: n0
            namespaces: [{size: 1G}, {size: 2G, block_size: 4096}]
        """)
    argv = machine_argv(topo, "qemu", RUN, "tcg")
    assert [d for d in devices(argv) if d.startswith("nvme-ns")] == [
        "nvme-ns,drive=tb-n0-ns1,bus=n0,nsid=1",
        "nvme-ns,drive=tb-n0-ns2,bus=n0,nsid=2,logical_block_size=4096,physical_block_size=4096"]
    assert [b.size for b in backing_files(topo, RUN)] == [1 << 30, 2 << 30]


def test_machine_settings():
    topo = topo_of("machine: {cpu: EPYC, memory: 3G, cpus: 4}\npcie: []\n")
    argv = machine_argv(topo, "/opt/q", RUN, "tcg")
    assert argv[:11] == ["/opt/q", "-machine", "q35", "-accel", "tcg", "-cpu", "EPYC", "-m",
                         "3072M", "-smp", "4"]


def test_create_backing_files(tmp_path):
    topo = topo_of("pcie: [{nvme: n0, pmr: 16M, namespaces: [{size: 2M}]}]\n")
    create_backing_files(topo, tmp_path)
    assert (tmp_path / "n0-ns1.img").stat().st_size == 2 * MiB
    assert (tmp_path / "n0-pmr.img").stat().st_size == 16 * MiB


def test_a_users_file_is_never_grown_or_truncated(tmp_path):
    """A PMR file named in the topology that changed size after validation is an error
    when QEMU is about to start; the file keeps its size and its content."""
    pmr = tmp_path / "mine.img"
    pmr.write_bytes(b"x" * (16 * MiB))
    topo = topo_of(f"pcie: [{{nvme: n0, pmr: {{size: 16M, file: {pmr}}}}}]\n", tmp_path)
    pmr.write_bytes(b"x" * 10)
    (tmp_path / "run").mkdir()
    from testbed.errors import UsageError
    with pytest.raises(UsageError, match="never grows"):
        create_backing_files(topo, tmp_path / "run")
    assert pmr.read_bytes() == b"x" * 10


def test_create_true_makes_a_missing_file_once(tmp_path):
    ns = tmp_path / "new.img"
    topo = topo_of(f"pcie: [{{nvme: n0, namespaces: [{{size: 2M, file: {ns}, create: true}}]}}]\n",
                   tmp_path)
    (tmp_path / "run").mkdir()
    create_backing_files(topo, tmp_path / "run")
    assert ns.stat().st_size == 2 * MiB
    ns.write_bytes(b"\1" * (2 * MiB))  # the user's data now: used as it is the next time
    create_backing_files(topo, tmp_path / "run")
    assert ns.read_bytes() == b"\1" * (2 * MiB)


# -- the shell script ---------------------------------------------------------------------

def run_with_printf(script: str, binary: str, env: dict | None = None) -> list[str]:
    """Run ``script`` with ``exec BINARY`` swapped for ``exec printf '%s\\0'``; the argv it got."""
    exec_line = f"exec {shlex.quote(binary)}"
    assert exec_line in script
    swapped = subprocess.run(["sed", f"s|^{re.escape(exec_line)} |exec printf '%s\\\\0' |"],
                             input=script.encode(), capture_output=True, check=True).stdout
    assert b"exec printf '%s\\0' " in swapped
    env = {k: v for k, v in os.environ.items() if k != "RUN_DIR"} | (env or {})
    out = subprocess.run([SH, "-c", swapped], capture_output=True, env=env, timeout=30)
    assert out.returncode == 0, out.stderr
    return [a.decode() for a in out.stdout.split(b"\0")[:-1]]


@pytest.mark.parametrize("name", ["switch-cmb", "nvme-pmr", "switch-cmb-intel-iommu",
                                  "fabric-large"])
def test_script_reproduces_argv(name, tmp_path):
    argv = machine_argv(load_topology(name), "/usr/bin/qemu-system-x86_64",
                        Path("/tmp/run dir"), "tcg")
    script = to_script(argv, run_dir="/tmp/run dir", prelude=["# a comment"],
                       owned=run_dir_files(load_topology(name), Path("/tmp/run dir")))
    path = tmp_path / "run.sh"
    path.write_text(script)
    subprocess.run([SH, "-n", str(path)], check=True)
    assert run_with_printf(script, argv[0]) == argv[1:]
    # RUN_DIR from the environment replaces the default everywhere
    moved = run_with_printf(script, argv[0], env={"RUN_DIR": "/elsewhere"})
    assert moved == [a.replace("/tmp/run dir", "/elsewhere") for a in argv[1:]]


NASTY = ["", " ", "a b", "'", '"', "$HOME", "`id`", "$(id)", "\\", "*", "?", "~", "a\nb", "\t",
         "-", "--", "-x", "é", "a,b", ";", "&&", "|", "#", "!", "}", "${x}", "%s"]


def test_script_quotes_nasty_arguments(tmp_path):
    argv = ["/bin/qemu", *NASTY, "-drive", "file=/r d/x'y.img", "-m", "-m", "/r d", "/r d/r d"]
    script = to_script(argv, run_dir="/r d")
    (tmp_path / "s.sh").write_text(script)
    subprocess.run([SH, "-n", str(tmp_path / "s.sh")], check=True)
    assert run_with_printf(script, argv[0]) == argv[1:]


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(args=st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                             max_size=12), max_size=8),
       run_dir=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                       min_size=1, max_size=6))
def test_script_quoting_round_trips(args, run_dir):
    argv = ["qemu", *args, f"file={run_dir}/x", run_dir]
    script = to_script(argv, run_dir=run_dir, owned=[f"{run_dir}/x", run_dir])
    assert run_with_printf(script, "qemu") == argv[1:]


def test_render_cli_script_runs(real_qemu, tmp_path):
    """``testbed render`` end to end: its script creates the backing files and execs QEMU
    with exactly the argv ``render --json`` prints."""
    def render(*args):
        return subprocess.run([sys.executable, "-m", "testbed", "render", *args],
                              capture_output=True, text=True, check=True, timeout=60).stdout

    run_dir = tmp_path / "run, dir"
    argv = json.loads(render("--json", "--run-dir", str(run_dir), "nvme-pmr"))
    script = render("--run-dir", str(run_dir), "nvme-pmr")
    (tmp_path / "s.sh").write_text(script)
    subprocess.run([SH, "-n", str(tmp_path / "s.sh")], check=True)
    assert run_with_printf(script, argv[0]) == argv[1:]
    assert sorted(p.name for p in run_dir.iterdir()) == ["nvme0-ns1.img", "nvme0-pmr.img",
                                                         "nvme1-ns1.img"]
    assert (run_dir / "nvme0-pmr.img").stat().st_size == 16 * MiB


def test_render_keeps_a_user_file_below_the_run_dir(real_qemu, tmp_path):
    """A namespace and a PMR the user named, whose paths start with --run-dir: the script
    uses exactly those files whatever RUN_DIR it runs with (it used to spell them
    "$RUN_DIR"/hostile/...); only the testbed's own files move with RUN_DIR."""
    work = tmp_path / "srv" / "work"
    (work / "hostile").mkdir(parents=True)
    user_ns = work / "hostile" / "user-ns.img"
    user_pmr = work / "work-pmr.img"  # a name like the testbed's own, in the run dir itself
    with open(user_ns, "wb") as f:
        f.truncate(4 * MiB)
    with open(user_pmr, "wb") as f:
        f.truncate(16 * MiB)
    topo = tmp_path / "hostile.yaml"
    topo.write_text(textwrap.dedent(f"""\
        name: hostile
        pcie:
          - root_port: rp0
            device:
              nvme: nvme0
              cmb: 16M
              pmr: {{size: 16M, file: {user_pmr}}}
              namespaces: [{{size: 4M, file: {user_ns}}}, {{size: 8M}}]
        """))
    for boot in ([], ["--boot"]) if _image_built() else ([],):
        args = [sys.executable, "-m", "testbed", "render", str(topo), "--run-dir", str(work),
                *boot]
        argv = json.loads(subprocess.run([*args, "--json"], capture_output=True, text=True,
                                         check=True, timeout=60).stdout)
        script = subprocess.run(args, capture_output=True, text=True, check=True,
                                timeout=60).stdout
        assert '"$RUN_DIR"/hostile' not in script and str(user_ns) in script, script
        elsewhere = tmp_path / "elsewhere"
        moved = run_with_printf(script, argv[0], env={"RUN_DIR": str(elsewhere)})
        assert f"file={user_ns},if=none" in " ".join(moved)
        assert any(f"mem-path={user_pmr}," in a for a in moved), moved
        # the testbed's own namespace image (and, with --boot, overlay and console) moved
        assert any(f"file={elsewhere}/nvme0-ns2.img," in a for a in moved), moved
        assert not any(str(work) in a for a in moved
                       if str(user_ns) not in a and str(user_pmr) not in a), moved
        assert sorted(p.name for p in elsewhere.iterdir()) == ["nvme0-ns2.img"]
        shutil.rmtree(elsewhere)
    assert user_ns.stat().st_size == 4 * MiB and user_pmr.stat().st_size == 16 * MiB


def _image_built() -> bool:
    from testbed.image.build import cached_image
    return cached_image() is not None
