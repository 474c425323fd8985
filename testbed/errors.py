"""The exception hierarchy of p2pdma-testbed.

Every error a user can cause derives from :class:`TestbedError`; the CLI turns
it into a message and an exit status, never a traceback.  Errors carry data as
attributes (the file and line, the log directory, the QEMU argv, the console
line that failed the boot): callers decide on the class and its fields, never
on the wording of a message.

    >>> try:
    ...     raise ToolMissing("mmdebstrap", package="mmdebstrap")
    ... except TestbedError as exc:
    ...     print(exc.exit_status, exc)
    2 host tool 'mmdebstrap' is missing: apt-get install mmdebstrap

    >>> err = BootTimeout("switch-cmb", "the guest never printed 'ready'", logs=None, argv=[])
    >>> isinstance(err, BootError), err.kind
    (True, 'boot-timeout')

Hierarchy::

    TestbedError
     +-- UsageError (exit 2): bad input; nothing was started
     |    +-- ToolMissing, SpecError, InstanceNameError
     +-- ImageError
     +-- KernelBuildError
     +-- QemuError
     |    +-- QemuNotFound, QemuStartError (+-- PortInUse), HotplugError
     +-- BootError (logs, argv)
     |    +-- BootTimeout, BootFailed (+-- DriverProbeFailed), GuestViewMismatch,
     |        ShareMountFailed
     +-- GuestError
     +-- WorkloadError
     +-- InstanceError
     +-- DotFailed (stderr)
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence


class TestbedError(Exception):
    """Base class: a problem to report to the user, with an exit status."""

    exit_status = 1
    kind = "error"  # a stable word for results files ("boot-timeout", "usage", ...)
    __test__ = False  # not a pytest test class


class UsageError(TestbedError):
    """Bad input from the user (command line, spec file): exit status 2."""

    exit_status = 2
    kind = "usage"


class ToolMissing(UsageError):
    """A host program the testbed needs is not installed."""

    def __init__(self, tool: str, package: str | None = None):
        self.tool = tool
        self.package = package or tool
        super().__init__(f"host tool {tool!r} is missing: apt-get install {self.package}")


@dataclass(frozen=True, order=True)
class Problem:
    """One problem in a topology file, pinned to a file, line, column and field.

    >>> str(Problem("t.yaml", 3, 5, "machine.memory", "expected a size such as 2G"))
    't.yaml:3:5: machine.memory: expected a size such as 2G'
    """

    file: str
    line: int
    col: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.file}:{self.line}:{self.col}: {where}{self.message}"


class SpecError(UsageError):
    """One or more problems in a topology file (exit status 2); ``problems`` lists them."""

    kind = "spec"

    def __init__(self, problems: Iterable[Problem]):
        self.problems = sorted(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class InstanceNameError(UsageError):
    """An instance name that is not a plain name (``../..``, ``/tmp/x``, ``.``)."""

    def __init__(self, name: str, why: str):
        self.name = name
        super().__init__(f"instance name {name!r}: {why}")


class ImageError(TestbedError):
    """The guest image could not be built or is unusable."""

    kind = "image"


class KernelBuildError(TestbedError):
    """A kernel build step failed; the message carries the tail of its output."""

    kind = "kernel-build"


class QemuError(TestbedError):
    """QEMU could not be started or misbehaved."""

    kind = "qemu"


class QemuNotFound(QemuError):
    """The QEMU binary does not exist or does not run."""


class QemuStartError(QemuError):
    """QEMU exited before its QMP monitor came up; ``stderr`` is what it printed."""

    def __init__(self, message: str, stderr: str = "", exitcode: int | None = None):
        super().__init__(message)
        self.stderr = stderr
        self.exitcode = exitcode


class PortInUse(QemuStartError):
    """QEMU could not bind the SSH forwarding port or the gdbstub's (another program took
    it)."""

    def __init__(self, message: str, stderr: str = "", exitcode: int | None = None,
                 port: int | None = None):
        super().__init__(message, stderr, exitcode)
        self.port = port


class HotplugError(QemuError):
    """A QMP hot-plug step failed or cannot be done: ``device`` is the topology name,
    ``step`` what was tried (``slot``, ``device_del``, ``blockdev-add``, ``device_add``)."""

    kind = "hotplug"

    def __init__(self, message: str, device: str, step: str):
        super().__init__(message)
        self.device = device
        self.step = step


class BootError(TestbedError):
    """The guest did not come up.

    ``logs`` is a directory that outlives the run (console.log, qemu.log) and
    ``argv`` the QEMU command line, when QEMU got that far.
    """

    kind = "boot"

    def __init__(self, message: str, logs: Path | None = None,
                 argv: Sequence[str] | None = None):
        super().__init__(message)
        self.logs = logs
        self.argv = list(argv) if argv is not None else None

    @property
    def console_log(self) -> Path | None:
        """The preserved console log, when there is one."""
        if self.logs is not None and (self.logs / "console.log").is_file():
            return self.logs / "console.log"
        return None


class BootTimeout(BootError):
    """No ready line or no SSH within the boot timeout, and no failure on the console:
    the one boot failure a matrix retries (a TCG guest on a loaded host can stall)."""

    kind = "boot-timeout"

    def __init__(self, topology: str, what: str, logs: Path | None = None,
                 argv: Sequence[str] | None = None, detail: str = ""):
        super().__init__(f"{topology}: {what}{detail}", logs, argv)
        self.topology = topology
        self.what = what


class BootFailed(BootError):
    """The guest failed for good: QEMU exited, the kernel panicked, init failed.
    ``line`` is the console line that says so (None when QEMU just exited)."""

    kind = "boot-failed"

    def __init__(self, message: str, logs: Path | None = None,
                 argv: Sequence[str] | None = None, line: str | None = None):
        super().__init__(message, logs, argv)
        self.line = line


class DriverProbeFailed(BootFailed):
    """A driver failed to probe a device the topology needs (e.g. nvme under a vIOMMU
    QEMU does not remap): not retried, the console line says which."""

    kind = "driver-probe-failed"


class GuestViewMismatch(BootError):
    """The guest booted but does not see the topology (tree check failed)."""

    kind = "guest-view"

    def __init__(self, message: str, logs: Path | None = None,
                 argv: Sequence[str] | None = None, diffs: Sequence[str] = ()):
        super().__init__(message, logs, argv)
        self.diffs = list(diffs)


class ShareMountFailed(BootError):
    """The guest booted but could not mount a shared directory (``--share``): a custom
    kernel without 9p, say.  ``share`` is the ``--share`` value, ``output`` what the
    guest's mount said."""

    kind = "share-mount"

    def __init__(self, message: str, logs: Path | None = None,
                 argv: Sequence[str] | None = None, share: str = "", output: str = ""):
        super().__init__(message, logs, argv)
        self.share = share
        self.output = output


class GuestError(TestbedError):
    """A command or transfer in a running guest failed."""

    kind = "guest"


class WorkloadError(TestbedError):
    """A workload could not be run (not: it ran and produced a bad verdict)."""

    kind = "workload"


class InstanceError(TestbedError):
    """A detached instance is stale, not ready, or its state file is unusable."""

    kind = "instance"


class DotFailed(TestbedError):
    """Graphviz's ``dot`` refused a drawing or did not finish; ``stderr`` is what it said."""

    kind = "dot"

    def __init__(self, message: str, stderr: str = ""):
        super().__init__(message)
        self.stderr = stderr


def did_you_mean(word: str, choices: Iterable[object]) -> str:
    """A ``did you mean`` hint for a misspelled word, or ``""`` (never the word itself).

    >>> did_you_mean("cbm", ["cmb", "pmr", "serial"])
    " (did you mean 'cmb'?)"
    >>> did_you_mean("device", ["device", "cmb"])
    ''
    """
    options = [str(c) for c in choices if str(c) != str(word)]
    close = difflib.get_close_matches(str(word), options, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
