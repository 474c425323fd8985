"""The kernel command line's override rule: a later ``key=value`` word replaces every
earlier word with that key; a bare flag (no ``=``) never replaces anything.

    >>> merge_words(["quiet", "iommu=on", "console=ttyS0", "iommu=pt", "quiet"])
    ['quiet', 'console=ttyS0', 'iommu=pt', 'quiet']

The boot (:func:`testbed.guest.boot.kernel_cmdline`) and the oracle's reading of the
command line (:mod:`testbed.verdicts.cmdline`) both use it, so what the oracle reads is
what the guest was given.
"""

from __future__ import annotations

from typing import Iterable


def merge_words(words: Iterable[str]) -> list[str]:
    """``words`` in order, each ``key=value`` word dropping the earlier ones of its key."""
    out: list[str] = []
    for w in words:
        key = w.split("=", 1)[0]
        out = [o for o in out if o.split("=", 1)[0] != key or "=" not in w]
        out.append(w)
    return out
