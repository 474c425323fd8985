"""Fixtures shared by the integration tests: custom kernels, the installed QEMU.

``profile_kernel`` (session): the CI profile kernel ``base+vfio-iommufd+coverage`` built
from Debian's linux-source-7.3, as a :class:`testbed.kernel.resolve.KernelSpec`: boot it
with ``BootOptions(kernel=profile_kernel)`` or ``--kernel profile_kernel.spec``; its
``build_tree`` is the kept build tree (vmlinux, .config, .gcno files, Module.symvers).
Built once per machine (cached by source, profiles and compiler; the first build takes
about 10 min of both cores) and never twice at once: the build holds a file lock that
other processes and pytest-xdist workers wait on. Mark tests that use it
``@pytest.mark.profile_kernel``.

``installed_qemu`` (session): QEMU 11.1 from trixie-backports in the testbed's private root
(see the fixture); mark tests that use it ``@pytest.mark.qemu_install``."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        pytest.fail(f"{name} is needed to build the test kernel package "
                    "(apt-get install e2fsprogs qemu-utils)", pytrace=False)
    return found


@pytest.fixture(scope="session")
def image():
    from testbed.image.build import ensure_image
    return ensure_image()


@pytest.fixture(scope="session")
def image_kernel_package(real_qemu, image, tmp_path_factory) -> Path:
    """The image's own kernel laid out like an unpacked distro package:
    ``boot/vmlinuz-<release>``, ``boot/config-<release>``, ``lib/modules/<release>``.

    The modules come out of the base image without mounting it: ``qemu-img convert`` to
    raw, then ``debugfs -R "rdump /usr/lib/modules DIR"`` (mtimes are kept, so the
    prepared initramfs and modules disk stay cached across sessions)."""
    root = tmp_path_factory.mktemp("kernel-package")
    raw = root / "base.raw"
    subprocess.run([_tool("qemu-img"), "convert", "-O", "raw", str(image.disk), str(raw)],
                   check=True, capture_output=True, timeout=300)
    dump = root / "dump"
    dump.mkdir()
    proc = subprocess.run([_tool("debugfs"), "-R", f"rdump /usr/lib/modules {dump}", str(raw)],
                          capture_output=True, text=True, timeout=300)
    raw.unlink()
    rel = image.kernel_release
    mods = dump / "modules" / rel
    assert (mods / "modules.dep").is_file(), f"debugfs rdump failed: {proc.stderr[-500:]}"
    pkg = root / "pkg"
    (pkg / "boot").mkdir(parents=True)
    (pkg / "lib/modules").mkdir(parents=True)
    shutil.copyfile(image.bzimage, pkg / "boot" / f"vmlinuz-{rel}")
    if (mods / "config").is_file():
        shutil.copyfile(mods / "config", pkg / "boot" / f"config-{rel}")
    mods.rename(pkg / "lib/modules" / rel)
    shutil.rmtree(dump)
    return pkg


CI_PROFILE_KERNEL = "profile:base+vfio-iommufd+coverage"


@pytest.fixture(scope="session")
def profile_kernel():
    """The CI profile kernel (see the module doc): a KernelSpec with ``build_tree``."""
    from testbed.errors import TestbedError
    from testbed.kernel.resolve import resolve_kernel
    try:
        kernel = resolve_kernel(CI_PROFILE_KERNEL)
    except TestbedError as exc:  # no source, no compiler, a build failure: say which
        pytest.fail(f"the CI profile kernel {CI_PROFILE_KERNEL} could not be built: {exc}",
                    pytrace=False)
    assert kernel is not None and kernel.build_tree is not None
    return kernel


@pytest.fixture(scope="session")
def installed_qemu():
    """QEMU 11.1 from trixie-backports in the testbed's private root (installed once per
    machine, cached in ~/.cache/p2pdma-testbed/qemu; concurrent sessions wait on the
    install's lock instead of installing twice).  A `testbed.qemu.binary.Qemu`: its
    ``.name`` is the installation's name (what `--qemu`, `machine.qemu` and the topology
    marker's ``qemu=`` take), ``.for_program("qemu-system-aarch64")`` its arm64 QEMU.
    Without network or root outside CI the tests that use it skip, loudly; under CI=true
    they fail."""
    from testbed.errors import TestbedError
    from testbed.image.qemu_root import install
    try:
        inst = install("trixie-backports")
        return inst.qemu()
    except TestbedError as exc:
        message = f"cannot install QEMU from trixie-backports: {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(f"SKIPPED (not CI): {message}")


# Modules whose tests, parametrized by a topology (the test id is the topology's name, the
# parameter carries the topology marker), each form an xdist scope of their own.
SCOPE_PER_TOPOLOGY = ("tests/integration/test_topologies.py",)


@pytest.hookimpl(tryfirst=True)  # before xdist's own (a firstresult hook)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadscope` keeps a module on one worker so that its guests boot once; but
    test_topologies.py boots 16 guests one after another (about 40% of the step), and one
    worker with all of them was the step's tail.  Its tests of one topology (one guest,
    released after its last test) are a scope of their own here, so its guests spread
    over both workers; every other module stays one scope."""
    if config.getoption("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class TopologyScopes(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module, _, test = nodeid.partition("::")
            if module.endswith(SCOPE_PER_TOPOLOGY) and test.endswith("]") and "[" in test:
                return f"{module}::[{test[test.index('[') + 1:-1]}]"
            return super()._split_scope(nodeid)

    return TopologyScopes(config, log)


def pytest_collection_modifyitems(config, items):
    """The from-source kernel build is opt-in: deselect it unless TESTBED_KSRC is set
    (`make test-kernel-build KSRC=...`).  (Under pytest-xdist `make test` keeps a module's
    tests on one worker with --dist loadscope, so a module's guests boot once.)"""
    if os.environ.get("TESTBED_KSRC"):
        return
    opt_in = [i for i in items if i.get_closest_marker("kernel_build")]
    if opt_in:
        config.hook.pytest_deselected(items=opt_in)
        items[:] = [i for i in items if not i.get_closest_marker("kernel_build")]
