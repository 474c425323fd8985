"""Every library topology renders the QEMU argv and kernel command line it rendered before
the machine became data (issue 19).

``tests/unit/data/argv-golden.json`` was written by this module at commit f909bd2, before
any of the refactoring: the command lines x86/q35 got when its constants were scattered over
the stages.  The test renders the same cases through today's code and compares the JSON
text byte for byte, so a refactor that changes one option anywhere fails here.  Regenerate
only for a change that is MEANT to alter command lines, and say so in the commit:

    .venv/bin/python tests/unit/test_argv_golden.py --write

What is recorded, per topology (every file in topologies/ and tests/topologies/ at f909bd2,
plus a few inline ones for the branches the library does not reach: the amd vIOMMU, virtio
passthrough, an NVMe on the root complex, odd block sizes, a path with a comma; a topology
added to the library later is not in the record, and one that is in it must stay):

- ``machine_argv`` under tcg and under kvm;
- the whole ``build()`` with a fixed :class:`BootMedia` (initrd, extra drives, the gdbstub,
  shares), QMP socket and console, under both accelerators; the binary is a stand-in
  QEMU (``data/argv-golden/*/qemu-system-x86_64``, a shell script answering ``-L help``),
  so the firmware rule (qboot when the data directories have it) does not depend on the
  host's QEMU;
- the guest kernel command line (``kernel_cmdline``), plain and with ``--gdb``;
- the root-bus functions the oracle adds beside the topology's (``verdicts.fabric``);

and, once: ``probe_argv`` (the KVM probe) and ``bare_argv`` (the CPU-model query), and the
kernel words every custom kernel gets (``kernel.prepare.BASE_CMDLINE``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data"
GOLDEN = DATA / "argv-golden.json"
FAKE = DATA / "argv-golden"
QBOOT_QEMU = FAKE / "qboot" / "qemu-system-x86_64"  # its data directory has qboot.rom
PLAIN_QEMU = FAKE / "plain" / "qemu-system-x86_64"  # no data directories at all

if __name__ == "__main__":  # run as a script: import the tree this file is in
    sys.path.insert(0, str(REPO))

from testbed.guest.boot import kernel_cmdline  # noqa: E402
from testbed.kernel.prepare import BASE_CMDLINE  # noqa: E402
from testbed.qemu.cmdline import (BootMedia, Drive, bare_argv, build, machine_argv,  # noqa: E402
                                  probe_argv)
from testbed.qemu.share import Share  # noqa: E402
from testbed.spec import load_topology  # noqa: E402
from testbed.spec.parse import parse  # noqa: E402
from testbed.spec.yamlsource import load  # noqa: E402
from testbed.verdicts.fabric import from_topology  # noqa: E402

RUN = Path("/run/tb,golden")
IMAGE_CMDLINE = ("console=ttyS0", "root=/dev/vda", "rootfstype=ext4", "rw", "init=/sbin/init",
                 "panic=-1", "cryptomgr.notests", "quiet", "loglevel=4")
MEDIA = BootMedia(
    kernel=Path("/k/vmlinux"), initrd=Path("/k/initrd.cpio"),
    cmdline=("console=ttyS0", "root=/dev/vda", "quiet"), disk=RUN / "boot.qcow2",
    ssh_port=40022,
    drives=(Drive(Path("/k/modules.ext4"), "tb-modules", "tb-modules"),
            Drive(Path("/d/scratch,1.qcow2"), "tb-scratch", "scratch", readonly=False,
                  format="qcow2")),
    gdb_port=41234,
    shares=(Share(Path("/src/linux"), "/mnt/src"), Share(Path("/out"), "/mnt/out", True)))

# Branches the library does not reach.  Parsed relative to data/argv-golden/, where the
# files named here do not exist (create: true; parsing creates nothing).
INLINE = {
    "inline-amd-iommu": """
        name: inline-amd-iommu
        machine: {cpu: EPYC-Rome, memory: 768M, cpus: 3}
        iommu: amd
        pcie:
          - root_port: rp0
            acs: false
            device: {nvme: nvme0, cmb: 2M, serial: "a,b"}
          - {nvme: rc0}
        """,
    "inline-amd-iommu-pt": """
        name: inline-amd-iommu-pt
        iommu: {model: amd, mode: passthrough}
        pcie:
          - root_port: rp0
            device: {nvme: nvme0, cmb: 64M}
        """,
    "inline-virtio-pt": """
        name: inline-virtio-pt
        iommu: {model: virtio, mode: passthrough}
        kernel_cmdline: [iommu.passthrough=0, "pci=noacs quiet"]
        pcie:
          - root_port: rp0
            device:
              switch: sw0
              downstream:
                - downstream_port: empty0
                - nvme: nvme0
                  namespaces: [{size: 16M, block_size: 4096}, {size: 8M}]
        """,
    "inline-files": """
        name: inline-files
        iommu: {model: intel, mode: passthrough}
        pcie:
          - nvme: rc0
            cmb: 4M
            pmr: {size: 1M, file: "pmr,x.img", create: true}
            namespaces: [{size: 2M, file: "ns,1.img", create: true, block_size: 4096}]
          - host_bridge: hb0
            root_ports:
              - root_port: hrp0
              - root_port: hrp1
                device: {nvme: hnvme}
        """,
}


def topologies(only: set[str] | None = None) -> dict:
    """Key -> topology; ``only``: the keys the golden file has (a later library file is
    not in it)."""
    out = {}
    for path in sorted((REPO / "topologies").glob("*.yaml")) + \
            sorted((REPO / "tests" / "topologies").glob("*.yaml")):
        key = f"{path.parent.name}/{path.name}"
        if only is None or key in only:
            out[key] = load_topology(path)
    for name, text in INLINE.items():
        out[name] = parse(load(textwrap.dedent(text), f"{name}.yaml"), f"{name}.yaml",
                          FAKE)
    return out


def _fabric(topo) -> list[list]:
    return [[d.id, d.kind, d.parent, d.devfn, d.multifunction, d.translated, d.label, d.root]
            for d in from_topology(topo)]


def render(only: set[str] | None = None) -> dict:
    """Every case (``only``: those), as the JSON-ready structure the golden file holds."""
    cases: dict = {}
    for key, topo in topologies(only).items():
        case: dict = {}
        for accel in ("tcg", "kvm"):
            case[f"machine_argv/{accel}"] = machine_argv(topo, "qemu-system-x86_64", RUN, accel)
            case[f"build/{accel}"] = build(topo, str(QBOOT_QEMU), RUN, accel, media=MEDIA,
                                           qmp=RUN / "qmp.sock", console=RUN / "console.log",
                                           extra=("-S",))
        case["build/tcg/no-qboot"] = build(topo, str(PLAIN_QEMU), RUN, "tcg", media=MEDIA)
        case["build/paused-no-media"] = build(topo, "qemu-system-x86_64", RUN, "tcg",
                                              qmp=RUN / "qmp.sock", paused=True)
        case["kernel_cmdline"] = kernel_cmdline(topo, IMAGE_CMDLINE)
        case["kernel_cmdline/gdb"] = kernel_cmdline(topo, [*IMAGE_CMDLINE, *BASE_CMDLINE],
                                                    ("iommu=off", "extra"), debug=True)
        case["fabric"] = _fabric(topo)
        cases[key] = case
    cases["probe_argv"] = probe_argv("qemu-system-x86_64", "kvm", Path("/k/vmlinux"),
                                     Path("/k/initrd"), ("console=ttyS0", "testbed.probe"),
                                     Path("/tmp/console.log"))
    cases["probe_argv/no-initrd"] = probe_argv("/usr/bin/qemu-system-x86_64", "tcg",
                                               Path("/k/bzImage"), None, (), Path("/c"))
    cases["bare_argv"] = bare_argv("qemu-system-x86_64", Path("/tmp/qmp.sock"))
    cases["BASE_CMDLINE"] = list(BASE_CMDLINE)
    return cases


def text(only: set[str] | None = None) -> str:
    """The golden JSON text; paths under the repository (the stand-in QEMUs, library files)
    are written relative to it, so the file does not depend on where the tree is."""
    out = json.dumps(render(only), indent=1, sort_keys=True) + "\n"
    return out.replace(str(REPO), "<repo>")


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key} :: "))
        else:
            out[prefix + key] = value
    return out


def test_every_command_line_is_as_before():
    want = GOLDEN.read_text()
    got = text(only=set(json.loads(want)))
    if got == want:
        return
    old, new = _flat(json.loads(want)), _flat(json.loads(got))
    lines = [f"{k}:\n  was {old.get(k)}\n  now {new.get(k)}"
             for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    raise AssertionError("command lines changed (first 10):\n" + "\n".join(lines[:10])
                         if lines else "same values, different JSON text")


def test_the_stand_in_qemus_answer_as_qemu_does():
    """The firmware rule asks ``QEMU -L help`` for its data directories."""
    out = subprocess.run([str(QBOOT_QEMU), "-L", "help"], capture_output=True, text=True,
                         check=True).stdout.split()
    assert (Path(out[0]) / "qboot.rom").is_file()
    assert subprocess.run([str(PLAIN_QEMU), "-L", "help"], capture_output=True, text=True,
                          check=True).stdout == ""


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: test_argv_golden.py --write   (rewrites " + str(GOLDEN) + ")")
    GOLDEN.write_text(text())
    print(f"wrote {GOLDEN}")
