"""Where the testbed keeps its cache, run state and results.

    >>> import os
    >>> old = os.environ.get("TESTBED_CACHE")
    >>> os.environ["TESTBED_CACHE"] = "/tmp/x"
    >>> str(cache_dir())
    '/tmp/x'
    >>> _ = os.environ.pop("TESTBED_CACHE") if old is None else os.environ.update(TESTBED_CACHE=old)
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Persistent cache (built images, probe results): ``$TESTBED_CACHE`` or XDG."""
    if os.environ.get("TESTBED_CACHE"):
        return Path(os.environ["TESTBED_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "p2pdma-testbed"


def state_dir() -> Path:
    """Per-user state of running instances (detached guests, port locks)."""
    if os.environ.get("TESTBED_STATE"):
        return Path(os.environ["TESTBED_STATE"])
    base = os.environ.get("XDG_RUNTIME_DIR") or os.path.join(str(cache_dir()), "run")
    return Path(base) / "p2pdma-testbed"


def project_root() -> Path:
    """The source checkout (topologies/ and guest-images/ live beside the package)."""
    return Path(__file__).resolve().parent.parent


def topologies_dir() -> Path:
    return project_root() / "topologies"


def guest_images_dir() -> Path:
    return project_root() / "guest-images"
