"""Join tokens: what lets a new node get a certificate from the cluster CA.

A token is ``CXJ1.<ca>.<id>.<secret>``:

- ``ca``: the SHA-256 fingerprint (hex) of the cluster CA certificate, so the joining
  node knows which CA to trust before it trusts anything (as Docker Swarm's tokens do);
- ``id``: names the token in the CA holder's list (``caxton cluster token list``);
- ``secret``: 32 random bytes (hex). It never travels: the joining node proves it holds
  it with an HMAC-SHA256 over its certificate request, and the CA holder proves the same
  over its answer (:mod:`caxton.security.enrolment`).

The CA holder keeps its tokens in ``join-tokens.json`` beside ``ca.key`` (mode 0600,
as sensitive as the key). Each token expires (``--ttl``) and admits a bounded number of
nodes (``--uses``, default 1); revoking one ends it at once. The file is read and
written under an exclusive ``flock``, so the CLI and a running node share it safely.
Tokens are never logged: log lines and listings name the id only.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from caxton.errors import CaxtonError

__all__ = [
    "JoinToken",
    "JoinTokenError",
    "TokenRecord",
    "TokenStore",
    "ca_fingerprint",
]

PREFIX = "CXJ1"
TOKENS_FILE = "join-tokens.json"
_TOKEN = re.compile(r"^CXJ1\.([0-9a-f]{64})\.([0-9a-f]{12})\.([0-9a-f]{64})$")


class JoinTokenError(CaxtonError):
    """A join token is malformed, unknown, expired, used up or revoked."""


def ca_fingerprint(der: bytes) -> str:
    """The SHA-256 fingerprint (hex) of a CA certificate in DER form."""
    return hashlib.sha256(der).hexdigest()


@dataclass(frozen=True)
class JoinToken:
    """A parsed token: what the joining node holds."""

    ca_fingerprint: str
    token_id: str
    secret: bytes

    @classmethod
    def parse(cls, text: str) -> JoinToken:
        match = _TOKEN.match(text.strip())
        if match is None:
            # Never echo the text: it may be a real token with a typo.
            raise JoinTokenError(
                "the join token is malformed: expected CXJ1.<ca>.<id>.<secret> as printed "
                "by `caxton cluster token create`"
            )
        return cls(match[1], match[2], bytes.fromhex(match[3]))

    def __str__(self) -> str:
        return f"{PREFIX}.{self.ca_fingerprint}.{self.token_id}.{self.secret.hex()}"

    def __repr__(self) -> str:  # keep the secret out of tracebacks and logs
        return f"JoinToken(id={self.token_id})"

    def mac(self, *parts: bytes) -> bytes:
        return token_mac(self.secret, *parts)


def token_mac(secret: bytes, *parts: bytes) -> bytes:
    """HMAC-SHA256 over ``parts``, each length-prefixed (no ambiguity between parts)."""
    digest = hmac.new(secret, digestmod=hashlib.sha256)
    for part in parts:
        digest.update(len(part).to_bytes(4, "big"))
        digest.update(part)
    return digest.digest()


@dataclass
class TokenRecord:
    """One token as the CA holder keeps it (the secret included: keep the file 0600)."""

    token_id: str
    secret: str
    created_at: float
    expires_at: float
    uses: int
    used: int = 0
    revoked: bool = False
    description: str = ""
    nodes: list[str] = field(default_factory=list)

    def status(self, now: float) -> str:
        if self.revoked:
            return "revoked"
        if now >= self.expires_at:
            return "expired"
        if self.used >= self.uses:
            return "used"
        return "valid"

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        """The listing's view: everything but the secret."""
        data = asdict(self)
        del data["secret"]
        data["status"] = self.status(time.time() if now is None else now)
        return data


class TokenStore:
    """The join tokens of one CA directory (``DIR/join-tokens.json``)."""

    def __init__(self, ca_dir: str | Path) -> None:
        self.ca_dir = Path(ca_dir)
        self.path = self.ca_dir / TOKENS_FILE

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, TokenRecord]]:
        """The tokens, read under an exclusive lock and written back on success."""
        if not self.ca_dir.is_dir():
            raise JoinTokenError(
                f"{self.ca_dir} is not a cluster CA directory: join tokens live on the node "
                f"that bootstrapped the cluster (its DATA_DIR/ca), or pass --ca DIR"
            )
        lock_path = self.path.with_suffix(".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            tokens = self._read()
            yield tokens
            self._write(tokens)
        finally:
            os.close(fd)  # releases the lock

    def _read(self) -> dict[str, TokenRecord]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise JoinTokenError(f"cannot read the join tokens in {self.path}: {exc}") from None
        return {item["token_id"]: TokenRecord(**item) for item in raw.get("tokens", [])}

    def _write(self, tokens: dict[str, TokenRecord]) -> None:
        temporary = self.path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"tokens": [asdict(t) for t in tokens.values()]}, handle, indent=1)
        os.replace(temporary, self.path)

    def fingerprint(self) -> str:
        """The fingerprint of this directory's CA (it must hold the CA key too)."""
        from cryptography.hazmat.primitives.serialization import Encoding

        from caxton.security.pki import CA_CERT, CA_KEY, load_certificate

        if not (self.ca_dir / CA_KEY).exists():
            raise JoinTokenError(
                f"{self.ca_dir} holds no cluster CA key ({CA_KEY}): create join tokens on "
                f"the node that bootstrapped the cluster (its DATA_DIR/ca), or pass --ca DIR"
            )
        return ca_fingerprint(load_certificate(self.ca_dir / CA_CERT).public_bytes(Encoding.DER))

    def create(self, ttl: float, *, uses: int = 1, description: str = "") -> JoinToken:
        """A new token, valid ``ttl`` seconds for ``uses`` nodes."""
        if ttl <= 0:
            raise JoinTokenError(f"a join token needs a positive lifetime, got {ttl:g}s")
        if uses < 1:
            raise JoinTokenError(f"a join token admits at least one node, got --uses {uses}")
        token = JoinToken(self.fingerprint(), secrets.token_hex(6), secrets.token_bytes(32))
        now = time.time()
        with self._locked() as tokens:
            tokens[token.token_id] = TokenRecord(
                token_id=token.token_id,
                secret=token.secret.hex(),
                created_at=now,
                expires_at=now + ttl,
                uses=uses,
                description=description,
            )
        return token

    def list(self) -> list[TokenRecord]:
        with self._locked() as tokens:
            return sorted(tokens.values(), key=lambda t: t.created_at)

    def revoke(self, token_id: str) -> TokenRecord:
        with self._locked() as tokens:
            record = tokens.get(token_id)
            if record is None:
                raise JoinTokenError(
                    f"no join token {token_id!r} (see `caxton cluster token list`)"
                )
            record.revoked = True
            return record

    def redeem(self, token_id: str, node_id: str, mac: bytes, *parts: bytes) -> bytes:
        """Check a joining node's proof (``mac`` over ``parts``) and spend one use of the
        token; return its secret (to prove the answer). Raises :class:`JoinTokenError`
        saying why the token is refused."""
        now = time.time()
        with self._locked() as tokens:
            record = tokens.get(token_id)
            if record is None:
                raise JoinTokenError(f"join token {token_id} is unknown to this CA")
            secret = bytes.fromhex(record.secret)
            if not hmac.compare_digest(token_mac(secret, *parts), mac):
                raise JoinTokenError(f"join token {token_id}: wrong secret (check the token)")
            status = record.status(now)
            if status == "revoked":
                raise JoinTokenError(f"join token {token_id} was revoked")
            if status == "expired":
                ago = now - record.expires_at
                raise JoinTokenError(
                    f"join token {token_id} expired {_ago(ago)} ago; create a new one with "
                    f"`caxton cluster token create`"
                )
            if status == "used":
                raise JoinTokenError(
                    f"join token {token_id} was already used ({record.used} of {record.uses} "
                    f"uses, by {', '.join(record.nodes) or '?'}); create a new one"
                )
            record.used += 1
            record.nodes.append(node_id)
            return secret


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
