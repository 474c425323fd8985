"""Kernel profiles (pure): the data files, profile sets, the --kernel profile: syntax, the
Kconfig reason parser, the build cache's key and keep rules, and the build's error lines.
tests/integration/test_kernel_profiles.py builds and boots the real thing."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from testbed.cli import main
from testbed.errors import KernelBuildError, UsageError
from testbed.kernel import profile_build
from testbed.kernel.build import _run
from testbed.kernel.config import Kconfig
from testbed.kernel.kconfig_why import parse_output
from testbed.kernel.profile import available, gcov_make_value, load, parse_names, profile_set
from testbed.kernel.profile_build import build_profile_kernel, check_config, source_identity
from testbed.kernel.resolve import parse_profile_spec, resolve_kernel

from .test_kernel_build import fake_source

ISSUE_GCOV = ["drivers/pci/p2pdma.c", "block/blk-mq-dma.c", "drivers/nvme/host/pci.c",
              "kernel/dma/", "drivers/iommu/dma-iommu.c", "drivers/iommu/iommufd/",
              "drivers/vfio/", "drivers/dma-buf/", "mm/hmm.c", "mm/memremap.c",
              "drivers/pci/hotplug/"]


def test_every_shipped_profile_reads_and_says_what_it_is_for():
    names = set(available())
    assert {"base", "vfio-iommufd", "coverage", "debug", "faults", "hmm", "btf"} <= names
    for name in names:
        p = load(name)
        assert p.summary, f"{name}: no '# summary:' line"
        assert len(p.options) >= 2
        comments = [t for t in p.text.splitlines() if t.startswith("#") and "CONFIG_" not in t]
        assert len(comments) >= 3, f"{name}: say why the options are there"


def test_base_has_what_the_guests_need_built_in():
    base = load("base").options
    for opt in ("CONFIG_PVH", "CONFIG_SERIAL_8250_CONSOLE", "CONFIG_PCIEPORTBUS",
                "CONFIG_HOTPLUG_PCI_PCIE", "CONFIG_BLK_DEV_NVME", "CONFIG_VIRTIO_BLK",
                "CONFIG_VIRTIO_NET", "CONFIG_HW_RANDOM_VIRTIO", "CONFIG_9P_FS", "CONFIG_EXT4_FS",
                "CONFIG_DEVTMPFS", "CONFIG_UNIX", "CONFIG_INET", "CONFIG_ZONE_DEVICE",
                "CONFIG_PCI_P2PDMA", "CONFIG_INTEL_IOMMU", "CONFIG_AMD_IOMMU",
                "CONFIG_VIRTIO_IOMMU", "CONFIG_IO_URING", "CONFIG_VFIO_PCI",
                "CONFIG_KPROBE_EVENTS", "CONFIG_FPROBE_EVENTS", "CONFIG_IKCONFIG_PROC"):
        assert base[opt] == "y", opt
    assert "CONFIG_DEBUG_INFO_BTF" not in base  # the btf profile adds it (see README)


def test_coverage_profiles_exactly_the_p2p_files():
    cov = load("coverage")
    assert list(cov.gcov) == ISSUE_GCOV
    assert cov.options["CONFIG_GCOV_KERNEL"] == "y"
    assert cov.options["CONFIG_GCOV_PROFILE_ALL"] == "n"
    ps = profile_set(["vfio-iommufd", "coverage"])
    (var,) = ps.make_variables()
    assert var.startswith("GCOV_PROFILE=$(if $(filter drivers/pci/p2pdma ")
    assert "kernel/dma/%" in var and "drivers/nvme/host/pci " in var
    assert profile_set(["vfio-iommufd"]).make_variables() == ()


def test_gcov_value_selects_objects_in_make(tmp_path):
    """The make variable does what the profile says, in real make: the listed object and
    the directory's objects, not the others."""
    if shutil.which("make") is None:
        pytest.skip("no make")
    value = gcov_make_value(["drivers/pci/p2pdma.c", "kernel/dma/"])
    mk = tmp_path / "Makefile"
    mk.write_text("target-stem = $(basename $(notdir $@))\n"
                  "%.o:\n\t@echo $@ $(GCOV_PROFILE)\n")
    out = {}
    for obj in ("drivers/pci/p2pdma.o", "drivers/pci/probe.o", "kernel/dma/mapping.o",
                "kernel/fork.o"):
        d, _, _ = obj.rpartition("/")
        res = subprocess.run(["make", "-s", "-f", str(mk), f"obj={d}", f"GCOV_PROFILE={value}",
                              obj], capture_output=True, text=True, cwd=tmp_path)
        out[obj] = res.stdout.split()[-1]
    assert out == {"drivers/pci/p2pdma.o": "y", "drivers/pci/probe.o": "n",
                   "kernel/dma/mapping.o": "y", "kernel/fork.o": "n"}


def test_profile_sets_put_base_first_and_the_last_value_wins(tmp_path):
    ps = profile_set(["coverage", "base", "vfio-iommufd", "coverage"])
    assert ps.names == ("base", "coverage", "vfio-iommufd")
    assert ps.name == "base+coverage+vfio-iommufd"
    mine = tmp_path / "mine.config"
    mine.write_text("# summary: x\n# a\n# b\n# c\n# CONFIG_PVH is not set\nCONFIG_NR_CPUS=4\n")
    ps2 = profile_set([str(mine)])
    assert ps2.wanted["CONFIG_PVH"] == "n" and ps2.asked_by("CONFIG_PVH") == "mine"
    assert ps2.asked_by("CONFIG_PCI_P2PDMA") == "base"
    assert ps.digest() != ps2.digest()
    assert "# ---- profile mine" in ps2.fragment()


def test_bad_profiles_are_usage_errors(tmp_path, capsys):
    with pytest.raises(UsageError, match="unknown kernel profile 'nope'.*base"):
        profile_set(["nope"])
    bad = tmp_path / "bad.config"
    bad.write_text("CONFIG_A=y\nthis is not kconfig\n")
    with pytest.raises(UsageError, match=r"bad.config:2: not a Kconfig line"):
        load(str(bad))
    g = tmp_path / "g.config"
    g.write_text("# gcov: ../etc/passwd\nCONFIG_A=y\n")
    with pytest.raises(UsageError, match=r"g.config:1: gcov"):
        load(str(g))
    with pytest.raises(UsageError, match="NAME"):
        parse_names("base++x")
    # the CLI says so before fetching or building anything
    assert main(["kernel", "build", "debian", "--profile", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown kernel profile" in err and "Traceback" not in err


def test_kernel_spec_syntax():
    assert parse_profile_spec("profile:base+coverage@/src/linux") == (["base", "coverage"],
                                                                      "/src/linux")
    assert parse_profile_spec("profile:hmm") == (["hmm"], "debian")
    with pytest.raises(UsageError, match="--kernel profile:"):
        resolve_kernel("profile:")
    with pytest.raises(UsageError, match="unknown kernel profile"):
        resolve_kernel("profile:base+nope")


def test_not_a_kernel_tree_is_refused_before_building(tmp_path, capsys):
    assert main(["kernel", "build", str(tmp_path), "--profile", "base"]) == 2
    err = capsys.readouterr().err
    assert "not a Linux source tree" in err and "Traceback" not in err


KCONFIG_HELP = """=== VIRTIO_NET
CONFIG_VIRTIO_NET:

This is the virtual network driver for virtio.

Symbol: VIRTIO_NET [=n]
Type  : tristate
Defined at drivers/net/Kconfig:443
  Prompt: Virtio network driver
  Depends on: NETDEVICES [=y] && NET_CORE [=n] && VIRTIO [=y]
  Location:
    -> Device Drivers
Selects: NET_FAILOVER [=n] && DIMLIB [=n]

=== NO_SUCH
unknown
=== HMM_MIRROR
Symbol: HMM_MIRROR [=n]
Type  : bool
Defined at mm/Kconfig:1247
  Depends on: MMU [=y]
Selected by [n]:
  - TEST_HMM [=n] && RUNTIME_TESTING_MENU [=n]
"""


def test_the_reason_kconfig_gives_is_parsed():
    why = parse_output(KCONFIG_HELP)
    net = why["CONFIG_VIRTIO_NET"]
    assert net.known and net.value == "n" and net.unmet == ("NET_CORE",)
    assert net.reason == ("depends on NETDEVICES [=y] && NET_CORE [=n] && VIRTIO [=y] "
                          "(drivers/net/Kconfig:443); unmet: NET_CORE")
    assert not why["CONFIG_NO_SUCH"].known
    assert "unknown to this kernel's Kconfig" in why["CONFIG_NO_SUCH"].reason
    hmm = why["CONFIG_HMM_MIRROR"]
    assert not hmm.prompt and "only a select sets it, e.g. from TEST_HMM" in hmm.reason


def test_check_config_compares_every_asked_value():
    ps = profile_set(["coverage"])
    ok = dict(ps.wanted.values)
    assert check_config(ps, Kconfig(ok)) == []
    drop = {**ok, "CONFIG_GCOV_KERNEL": "n", "CONFIG_GCOV_PROFILE_ALL": "y"}
    assert check_config(ps, Kconfig(drop)) == ["CONFIG_GCOV_KERNEL", "CONFIG_GCOV_PROFILE_ALL"]


def test_source_identity_follows_the_content(tmp_path):
    plain = fake_source(tmp_path / "plain")
    a = source_identity(plain)
    assert source_identity(plain) == a and a.startswith("tree:")
    (plain / "Kconfig").write_text("changed\n")
    assert source_identity(plain) != a
    if shutil.which("git") is None:
        return
    repo = fake_source(tmp_path / "repo")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    clean = source_identity(repo)
    assert clean.startswith("git:")
    (repo / "Kconfig").write_text("patched\n")
    patched = source_identity(repo)
    (repo / "new.c").write_text("int x;\n")
    assert len({clean, patched, source_identity(repo)}) == 3


def test_a_git_trees_identity_does_not_follow_the_abbreviation_length(tmp_path, monkeypatch):
    """git abbreviates object names in a diff to a length that grows with the repository's
    object count; a background gc after a commit changed it (7 -> 9 digits) on a kernel git
    tree, and with it the build key, between two builds of the same tree."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = fake_source(tmp_path / "repo")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    (repo / "Kconfig").write_text("patched\n")
    short = source_identity(repo)
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "core.abbrev")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "12")
    assert source_identity(repo) == short


@pytest.fixture
def fake_build(tmp_path, monkeypatch):
    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(profile_build, "check_build_tools", lambda: None)
    monkeypatch.setattr(profile_build, "compiler_identity", lambda arch: "gcc-test")
    return fake_source(tmp_path / "src")


def test_the_same_inputs_cost_nothing(fake_build, monkeypatch):
    calls = []

    def build(src, ps, arch, compiler, identity, key, tree, *rest):
        calls.append(key)
        (tree / "arch/x86/boot").mkdir(parents=True, exist_ok=True)
        (tree / "arch/x86/boot/bzImage").write_bytes(b"image")
        (tree / ".config").write_text("CONFIG_X=y\n")
        good = {"key": key, "profiles": list(ps.names), "source": str(src),
                "source_identity": identity, "arch": "x86_64", "release": "7.3.4",
                "config_sha256": "c" * 64}
        profile_build._keep(tree, profile_build.ARCHES["x86_64"], good)
        return profile_build._result(tree, good, True, 0.0, 0.0)
    monkeypatch.setattr(profile_build, "_build", build)
    first = build_profile_kernel(fake_build, ["hmm"])
    again = build_profile_kernel(fake_build, ["hmm"])
    assert len(calls) == 1 and first.built and not again.built
    assert again.image.read_bytes() == b"image" and again.name == "base+hmm"
    assert again.tree == first.tree and again.config_sha256 == "c" * 64
    (fake_build / "Kconfig").write_text("a one-file change\n")
    build_profile_kernel(fake_build, ["hmm"])  # a new key: built again, in the same tree
    assert len(calls) == 2 and calls[0] != calls[1]


def test_a_failed_build_keeps_the_last_good_one(fake_build, monkeypatch):
    ps = profile_set(["hmm"])
    arch = profile_build.ARCHES["x86_64"]
    tree = profile_build.default_tree(fake_build.resolve(), ps, arch)
    tree.mkdir(parents=True)
    (tree / "arch/x86/boot").mkdir(parents=True)
    (tree / "arch/x86/boot/bzImage").write_bytes(b"good image")
    (tree / ".config").write_text("CONFIG_X=y\n")
    profile_build._keep(tree, arch, {"key": "old", "profiles": list(ps.names)})
    stamp = {"format": profile_build.BUILD_FORMAT, "profiles": ps.digest(),
             "compiler": "gcc-test", "source": str(fake_build.resolve()),
             "makefile": __import__("hashlib").sha256(
                 (fake_build / "Makefile").read_bytes()).hexdigest()}
    (tree / profile_build.CONFIG_STAMP).write_text(json.dumps(stamp))

    def failing(argv, cwd, log_file, what, watch=False, env=None):
        raise KernelBuildError(f"{what} failed: a.c:1:1: error: boom\nfull log: {log_file.name}")
    monkeypatch.setattr(profile_build, "_run", failing)
    with pytest.raises(KernelBuildError, match="error: boom"):
        build_profile_kernel(fake_build, ["hmm"])
    good = json.loads((tree / "testbed-good/good.json").read_text())
    assert good["key"] == "old"
    assert (tree / "testbed-good/image").read_bytes() == b"good image"


def test_build_errors_name_the_first_compiler_error_and_a_full_disk(tmp_path):
    with open(tmp_path / "log", "w") as log:
        with pytest.raises(KernelBuildError) as exc:
            _run(["sh", "-c", "echo '  CC a.o'; echo 'a.c:3:5: error: x undeclared'; "
                  "echo 'b.c:1:1: error: later'; exit 2"], tmp_path, log, "make bzImage")
        msg = str(exc.value)
        assert msg.startswith("make bzImage failed: a.c:3:5: error: x undeclared")
        assert f"full log: {tmp_path / 'log'}" in msg and "later" not in msg
        with pytest.raises(KernelBuildError, match="the disk is full"):
            _run(["sh", "-c", "echo 'cc1: fatal error: a.o: No space left on device'; exit 2"],
                 tmp_path, log, "make bzImage")


def test_kernel_profiles_lists_every_profile(capsys):
    assert main(["kernel", "profiles"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == list(available())
    assert any(line.startswith("coverage") and "gcov: 11 paths" in line for line in out)


def test_boot_prints_the_profile_set_and_its_options(tmp_path):
    from testbed.commands.boot import profile_lines
    from testbed.kernel.resolve import KernelSpec
    k = KernelSpec("profile:vfio-iommufd+coverage", "profile", tmp_path, tmp_path / "image",
                   "7.3.4", build_tree=tmp_path, profiles=("base", "vfio-iommufd", "coverage"),
                   config_sha256="ab" * 32)
    text = profile_lines(k)
    assert text.startswith(f"kernel: profile base+vfio-iommufd+coverage (7.3.4), .config "
                           f"sha256 {'ab' * 32}")
    assert "vfio-iommufd: CONFIG_IOMMUFD=y CONFIG_VFIO_DEVICE_CDEV=y" in text
    assert "coverage: gcov for drivers/pci/p2pdma.c" in text
    assert k.label == "7.3.4 base+vfio-iommufd+coverage"
    assert "profile base+vfio-iommufd+coverage" in k.description


def test_bisect_builds_commits_as_profile_kernels(tmp_path):
    from testbed.cli import build_parser
    from testbed.commands.bisect import bisect_options as options_for
    from testbed.spec import load_topology
    topo = load_topology("switch-cmb")

    def bisect_options(args):
        return options_for(args, topo)
    parser = build_parser()
    args = parser.parse_args(["bisect", "switch-cmb", "--source", str(tmp_path),
                              "--profile", "coverage+vfio-iommufd", "--profile", "hmm"])
    opts = bisect_options(args)
    assert opts.profiles == ("base", "coverage", "vfio-iommufd", "hmm")
    assert opts.source == tmp_path
    with pytest.raises(UsageError, match="--profile builds the source"):
        bisect_options(parser.parse_args(["bisect", "switch-cmb", "--kernel", "default",
                                          "--profile", "hmm"]))
    with pytest.raises(UsageError, match="unknown kernel profile"):
        bisect_options(parser.parse_args(["bisect", "switch-cmb", "--profile", "nope"]))
