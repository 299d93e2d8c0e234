"""The gossip keyring: AES-GCM for datagrams when nodes run without TLS.

Several keys may be installed; the first (primary) encrypts, every key is tried to
decrypt. Rotation is three steps run on every node: :meth:`Keyring.install` the new key,
:meth:`Keyring.use` it as primary once all nodes have it, then :meth:`Keyring.remove`
the old one. A sealed datagram is ``version(1) | nonce(12) | ciphertext+tag``.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from caxton.errors import ConfigError

SEALED_VERSION = 1
NONCE_SIZE = 12
_AAD = b"caxton-gossip-v1"


def decode_key(text: str) -> bytes:
    """A base64 key of 16, 24 or 32 bytes (AES-128/192/256)."""
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("security.cluster.gossip_keys: a key is not valid base64") from None
    if len(key) not in (16, 24, 32):
        raise ConfigError(
            f"security.cluster.gossip_keys: a key decodes to {len(key)} bytes; "
            f"AES-GCM needs 16, 24 or 32 (make one with: "
            f"python3 -c 'import os,base64;print(base64.b64encode(os.urandom(32)).decode())')"
        )
    return key


def generate_key() -> str:
    """A new random AES-256 key, base64-encoded as config holds it."""
    return base64.b64encode(os.urandom(32)).decode()


class Keyring:
    def __init__(self, keys: Iterable[bytes] = ()) -> None:
        self._keys: list[bytes] = []
        self._ciphers: list[AESGCM] = []
        for key in keys:
            self.install(key)

    @classmethod
    def from_config(cls, encoded: Iterable[str]) -> Keyring:
        return cls(decode_key(text) for text in encoded)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def primary(self) -> bytes | None:
        return self._keys[0] if self._keys else None

    def install(self, key: bytes) -> None:
        """Accept ``key`` for decryption (appended; the primary does not change)."""
        if len(key) not in (16, 24, 32):
            raise ConfigError(f"gossip key must be 16, 24 or 32 bytes, got {len(key)}")
        if key not in self._keys:
            self._keys.append(key)
            self._ciphers.append(AESGCM(key))

    def use(self, key: bytes) -> None:
        """Make an installed ``key`` the one that encrypts."""
        if key not in self._keys:
            raise ConfigError("cannot use a gossip key that is not installed")
        index = self._keys.index(key)
        self._keys.insert(0, self._keys.pop(index))
        self._ciphers.insert(0, self._ciphers.pop(index))

    def remove(self, key: bytes) -> None:
        """Stop accepting ``key``. The primary key cannot be removed."""
        if key == self.primary:
            raise ConfigError("cannot remove the primary gossip key; use another key first")
        if key in self._keys:
            index = self._keys.index(key)
            del self._keys[index]
            del self._ciphers[index]

    def seal(self, plaintext: bytes) -> bytes:
        if not self._ciphers:
            raise ConfigError("the gossip keyring is empty")
        nonce = os.urandom(NONCE_SIZE)
        return bytes([SEALED_VERSION]) + nonce + self._ciphers[0].encrypt(nonce, plaintext, _AAD)

    def open(self, sealed: bytes) -> bytes | None:
        """The plaintext, or None when no installed key authenticates ``sealed``."""
        if len(sealed) < 1 + NONCE_SIZE + 16 or sealed[0] != SEALED_VERSION:
            return None
        nonce, ciphertext = sealed[1 : 1 + NONCE_SIZE], sealed[1 + NONCE_SIZE :]
        for cipher in self._ciphers:
            try:
                return cipher.decrypt(nonce, ciphertext, _AAD)
            except InvalidTag:
                continue
        return None
