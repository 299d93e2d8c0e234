"""Minting HS tokens for ``caxton security token create``."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from caxton.config import Config
from caxton.errors import ConfigError
from caxton_auth_jwt.settings import HMAC, SECTION, JwtSettings

__all__ = ["create_token"]


def create_token(
    config: Config,
    *,
    subject: str,
    roles: Sequence[str],
    expires_in: float | None = None,
    now: float | None = None,
) -> str:
    """An HS token for ``subject`` with ``roles``, valid ``expires_in`` seconds
    (default ``security.jwt_expiry``), signed with the first HS algorithm allowed."""
    import jwt

    config.add_section(SECTION)
    settings = JwtSettings.build(
        config["auth.jwt"], configured_secret=config["security"]["jwt_secret"]
    )
    algorithms = sorted(settings.algorithms & HMAC)
    if not algorithms or settings.secret is None:
        raise ConfigError(
            "auth.jwt.algorithms has no HS algorithm: tokens for RS/ES/EdDSA keys are "
            "issued by whoever holds the private key, not by caxton"
        )
    issued = int(time.time() if now is None else now)
    lifetime = config["security"]["jwt_expiry"] if expires_in is None else expires_in
    claims: dict[str, Any] = {
        "sub": subject,
        "iat": issued,
        "nbf": issued,
        "exp": issued + int(lifetime),
        "jti": uuid.uuid4().hex,
    }
    _set_path(claims, settings.roles_claim, list(roles))
    if settings.issuer:
        claims["iss"] = settings.issuer
    if settings.audience:
        claims["aud"] = settings.audience[0]
    headers = {"kid": settings.hs_kid} if settings.hs_kid else None
    return jwt.encode(claims, settings.secret, algorithm=algorithms[0], headers=headers)


def _set_path(claims: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = claims
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
