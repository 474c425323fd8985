"""Logging for the command line: every module logs to ``testbed.<module>``; the CLI (and
the supervisor) install one handler that prints ``testbed: message`` on stderr.

    >>> import logging
    >>> setup(verbosity=0) is logging.getLogger("testbed")
    True
"""

from __future__ import annotations

import logging
import sys

ROOT = "testbed"


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"testbed: {record.levelname.lower()}: {msg}"
        return f"testbed: {msg}"


def setup(verbosity: int = 0, stream=None) -> logging.Logger:
    """-q (verbosity -1): warnings only; default: progress; -v (1): debug."""
    logger = logging.getLogger(ROOT)
    for h in list(logger.handlers):
        if getattr(h, "_testbed", False):
            logger.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._testbed = True  # type: ignore[attr-defined]
    handler.setFormatter(_Format())
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if verbosity < 0 else
                    logging.DEBUG if verbosity > 0 else logging.INFO)
    logger.propagate = True
    return logger
