"""Node keys: an Ed25519 identity (signs state) and an X25519 WireGuard key, stored 0600."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

from nacl.encoding import RawEncoder
from nacl.hash import blake2b
from nacl.public import PrivateKey
from nacl.signing import SigningKey, VerifyKey

from meshnet.errors import MeshnetError

IDENTITY_FILE = "identity.key"
WIREGUARD_FILE = "wireguard.key"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str, size: int | None = None) -> bytes:
    """Decode base64, checking the length; raises ValueError on anything else."""
    raw = base64.b64decode(text, validate=True)
    if size is not None and len(raw) != size:
        raise ValueError(f"expected {size} bytes, got {len(raw)}")
    return raw


def node_id_for(identity_pub: bytes) -> str:
    """A node's id is a hash of its identity key, so a node row certifies itself."""
    return blake2b(identity_pub, digest_size=8, encoder=RawEncoder).hex()


@dataclass(frozen=True)
class NodeKeys:
    identity: SigningKey
    wireguard: PrivateKey

    @property
    def node_id(self) -> str:
        return node_id_for(bytes(self.identity.verify_key))

    @property
    def identity_pub(self) -> str:
        return b64(bytes(self.identity.verify_key))

    @property
    def wireguard_pub(self) -> str:
        return b64(bytes(self.wireguard.public_key))

    @property
    def wireguard_private(self) -> str:
        """Clamped the way WireGuard stores it (same public key), so read-back compares equal."""
        k = bytearray(bytes(self.wireguard))
        k[0] &= 248
        k[31] = (k[31] & 127) | 64
        return b64(bytes(k))

    def sign(self, message: bytes) -> str:
        return b64(self.identity.sign(message).signature)


def verify(identity_pub: str, message: bytes, signature: str) -> bool:
    try:
        VerifyKey(unb64(identity_pub, 32)).verify(message, unb64(signature, 64))
    except Exception:
        return False
    return True


def write_secret(path: Path, data: bytes) -> None:
    """Write a file readable by root only, atomically (a crash leaves old or new, never half)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _load_or_make(path: Path) -> bytes:
    if path.exists():
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
        raw = unb64(path.read_text().strip(), 32)
        return raw
    raw = os.urandom(32)
    write_secret(path, (b64(raw) + "\n").encode())
    return raw


def load_or_create(state_dir: Path) -> NodeKeys:
    """The node's keys, made on first start and reused after every restart."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        identity = SigningKey(_load_or_make(state_dir / IDENTITY_FILE))
        wg = PrivateKey(_load_or_make(state_dir / WIREGUARD_FILE))
    except ValueError as e:
        raise MeshnetError(f"corrupt key file in {state_dir}: {e}") from e
    return NodeKeys(identity, wg)
