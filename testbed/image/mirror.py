"""The image builder's mirror choice: the host's own Debian mirror.

The reading of the host's apt configuration lives in :mod:`testbed.util.debian_mirror`
(the kernel stage's source fetch uses it too); this module keeps the image stage's names.
"""

from __future__ import annotations

from ..util.debian_mirror import (APT, ENV, Source, host_sources, parse_deb822,
                                  parse_sources_list, pick, resolve_mirror)

__all__ = ["APT", "ENV", "Source", "host_sources", "parse_deb822", "parse_sources_list",
           "pick", "resolve_mirror"]
