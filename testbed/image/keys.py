"""SSH key pairs made at image build time (ed25519, OpenSSH formats).

The client key logs the orchestrator in as root; the host key is installed as
the guest's only sshd host key, and its public half is pinned by the client.

    >>> pair = generate_ed25519("test")
    >>> pair.public.startswith("ssh-ed25519 AAAA") and pair.public.endswith(" test")
    True
    >>> pair.private.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    True
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


@dataclass(frozen=True)
class KeyPair:
    private: bytes  # OpenSSH private key file contents (unencrypted)
    public: str  # "ssh-ed25519 AAAA... comment"

    @property
    def public_blob(self) -> str:
        """The public key without its comment: "ssh-ed25519 AAAA..."."""
        return " ".join(self.public.split()[:2])

    def write(self, private_path: Path) -> None:
        """Write the private key (mode 0600) and ``<name>.pub`` beside it."""
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(self.private)
        os.chmod(private_path, 0o600)
        private_path.with_name(private_path.name + ".pub").write_text(self.public + "\n")


def generate_ed25519(comment: str) -> KeyPair:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return KeyPair(private, f"{public} {comment}")
