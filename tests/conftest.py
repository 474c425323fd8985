"""Shared test helpers: only what several test modules need.

``real_qemu``: the path of qemu-system-x86_64 for tests that start QEMU.  When it is missing
such tests fail under CI (the ``CI`` environment variable is set) and are skipped, loudly,
elsewhere.  (Not named ``guest``/``qemu``: a pytest plugin of the project will add those.)
"""

from __future__ import annotations

import os
import shutil

import pytest

QEMU = "qemu-system-x86_64"


def qemu_missing_reason() -> str | None:
    """Why QEMU cannot be used here, or None when it can."""
    if shutil.which(QEMU) is None:
        return (f"{QEMU} is not installed (Debian: apt-get install qemu-system-x86): "
                "the tests that start QEMU did NOT run")
    return None


@pytest.fixture(scope="session")
def real_qemu() -> str:
    reason = qemu_missing_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {reason}", pytrace=False)
        pytest.skip(f"SKIPPED, NOT PASSED: {reason}")
    return shutil.which(QEMU)
