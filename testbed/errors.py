"""The exception hierarchy of p2pdma-testbed.

Every error a user can cause derives from :class:`TestbedError`; the CLI turns
it into a message and an exit status, never a traceback.

    >>> try:
    ...     raise ToolMissing("mmdebstrap", package="mmdebstrap")
    ... except TestbedError as exc:
    ...     print(exc.exit_status, exc)
    2 host tool 'mmdebstrap' is missing: apt-get install mmdebstrap
"""

from __future__ import annotations


class TestbedError(Exception):
    """Base class: a problem to report to the user, with an exit status."""

    exit_status = 1
    __test__ = False  # not a pytest test class


class UsageError(TestbedError):
    """Bad input from the user (command line, spec file): exit status 2."""

    exit_status = 2


class ToolMissing(UsageError):
    """A host program the testbed needs is not installed."""

    def __init__(self, tool: str, package: str | None = None):
        self.tool = tool
        self.package = package or tool
        super().__init__(f"host tool {tool!r} is missing: apt-get install {self.package}")


class ImageError(TestbedError):
    """The guest image could not be built or is unusable."""


class QemuError(TestbedError):
    """QEMU could not be started or misbehaved."""


class BootError(TestbedError):
    """The guest did not come up; the message carries the console tail.

    ``logs`` is a directory that outlives the run (console.log, qemu.log) and
    ``argv`` the QEMU command line, when QEMU got that far.
    """

    def __init__(self, message: str, logs=None, argv=None):
        super().__init__(message)
        self.logs = logs
        self.argv = argv


class GuestError(TestbedError):
    """A command or transfer in a running guest failed."""


class WorkloadError(TestbedError):
    """A workload could not be run (not: it ran and produced a bad verdict)."""
