"""Endpoint kinds: each is one module here (its node class, its fields and how they are
read, its QEMU device and options, its PCI ID and driver, its P2P role) and one row in
:data:`ENDPOINTS`.  The stages read the row: the parser, the command line, the QEMU checks,
the guest check, the oracle and the picture.

    >>> [k.word for k in ENDPOINTS.values()]
    ['nvme', 'igb']
    >>> kind_of(Igb("nic0")).driver
    'igb'
"""

from __future__ import annotations

from .base import Bar, BackingFile, Endpoint, EndpointKind, Need
from .igb import IGB, Igb
from .nvme import NVME, Namespace, Nvme, Pmr

# node class -> its kind, in the order the language lists them
ENDPOINTS: dict[type[Endpoint], EndpointKind] = {k.node: k for k in (NVME, IGB)}
BY_WORD: dict[str, EndpointKind] = {k.word: k for k in ENDPOINTS.values()}


def kind_of(node: Endpoint) -> EndpointKind:
    return ENDPOINTS[type(node)]


__all__ = ["BY_WORD", "Bar", "BackingFile", "ENDPOINTS", "Endpoint", "EndpointKind", "IGB",
           "Igb", "NVME", "Namespace", "Need", "Nvme", "Pmr", "kind_of"]
