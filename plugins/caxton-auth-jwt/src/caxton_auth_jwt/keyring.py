"""The keys tokens are verified with, by ``kid``, each bound to its algorithm family.

A key verifies only the algorithms of its own type: the HS secret only HS*, an RSA
key only RS*/PS*, an EC key only ES*, an Ed25519/Ed448 key only EdDSA. That binding is
what defeats RS/HS key confusion (a token signed with HS256 using the RSA *public* key
as the secret): the RSA key is never handed to an HMAC check. ``kid`` is only ever a
dictionary key, never a path or a query.

The JWKS file is re-read when its modification time changes, so rotating keys is
editing that file: a key removed from it stops verifying at once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caxton.errors import AuthError, ConfigError
from caxton_auth_jwt.settings import ASYMMETRIC, HMAC, JwtSettings

__all__ = ["KeyRing", "VerificationKey"]


@dataclass(frozen=True)
class VerificationKey:
    kid: str | None
    family: str
    key: Any

    @property
    def algorithms(self) -> frozenset[str]:
        return HMAC if self.family == "hmac" else ASYMMETRIC[self.family]


def _family(public_key: Any, origin: str) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    if isinstance(public_key, rsa.RSAPublicKey):
        return "rsa"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return "ec"
    if isinstance(public_key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return "okp"
    raise ConfigError(f"{origin}: unsupported public key type {type(public_key).__name__}")


def load_pem(kid: str, path: str) -> VerificationKey:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    origin = f"auth.jwt.public_keys.{kid} ({path})"
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ConfigError(f"{origin}: cannot read: {exc.strerror}") from None
    try:
        public_key = load_pem_public_key(data)
    except ValueError:
        raise ConfigError(
            f"{origin}: not a PEM public key (a private key or certificate does not belong here)"
        ) from None
    return VerificationKey(kid, _family(public_key, origin), public_key)


def load_jwks(path: Path) -> dict[str, VerificationKey]:
    import jwt

    origin = f"auth.jwt.jwks_file ({path})"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{origin}: cannot read: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"{origin}: not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ConfigError(f'{origin}: expected a JWKS object {{"keys": [...]}}')
    keys: dict[str, VerificationKey] = {}
    for entry in data["keys"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
            raise ConfigError(f"{origin}: every key needs a string 'kid'")
        kid = entry["kid"]
        if entry.get("kty") == "oct":
            raise ConfigError(f"{origin}: key {kid!r} is symmetric; a JWKS holds public keys")
        if entry.get("use", "sig") != "sig":
            continue
        if "d" in entry:
            raise ConfigError(f"{origin}: key {kid!r} is a private key; publish public keys")
        try:
            public_key = jwt.PyJWK(entry).key
        except jwt.PyJWTError as exc:
            raise ConfigError(f"{origin}: key {kid!r}: {exc}") from None
        keys[kid] = VerificationKey(kid, _family(public_key, origin), public_key)
    return keys


class KeyRing:
    """The HS secret (if any), the PEM keys and the JWKS keys of one driver."""

    def __init__(self, settings: JwtSettings) -> None:
        self.settings = settings
        self.secret = (
            VerificationKey(settings.hs_kid, "hmac", settings.secret)
            if settings.secret is not None
            else None
        )
        self.pem: Mapping[str, VerificationKey] = {
            kid: load_pem(kid, path) for kid, path in settings.public_keys.items()
        }
        self._jwks_path = Path(settings.jwks_file).expanduser() if settings.jwks_file else None
        self._jwks: dict[str, VerificationKey] = {}
        self._jwks_stamp: tuple[int, int] | None = None
        self.refresh()

    def refresh(self) -> None:
        """Re-read the JWKS file if it changed since it was last read."""
        if self._jwks_path is None:
            return
        try:
            stat = os.stat(self._jwks_path)
        except OSError as exc:
            raise ConfigError(
                f"auth.jwt.jwks_file ({self._jwks_path}): cannot read: {exc.strerror}"
            ) from None
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._jwks_stamp:
            self._jwks = load_jwks(self._jwks_path)
            self._jwks_stamp = stamp

    def by_kid(self) -> dict[str, VerificationKey]:
        keys = {**self._jwks, **self.pem}
        if self.secret is not None and self.secret.kid is not None:
            keys[self.secret.kid] = self.secret
        return keys

    def lookup(self, kid: str | None, algorithm: str) -> VerificationKey:
        """The key for a token's header; :class:`AuthError` when there is none that fits."""
        if kid is not None:
            key = self.by_kid().get(kid)
            if key is None:
                raise AuthError("invalid token: unknown key id (kid); it may have been rotated out")
        elif algorithm in HMAC and self.secret is not None:
            key = self.secret
        else:
            candidates = [k for k in self.by_kid().values() if algorithm in k.algorithms]
            if len(candidates) != 1:
                raise AuthError(
                    "invalid token: no kid in its header, and the key cannot be told without one"
                )
            key = candidates[0]
        if algorithm not in key.algorithms:
            raise AuthError(f"invalid token: algorithm {algorithm} does not fit its key")
        return key
