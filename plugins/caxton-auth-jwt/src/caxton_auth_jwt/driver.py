"""The ``jwt`` auth driver: ``Authorization: Bearer <JWT>``, checked with PyJWT.

Order of checks for a bearer token: size; header readable; ``alg`` on the allow-list
(``auth.jwt.algorithms``; ``none`` never); a key for its ``kid`` whose type fits the
algorithm (:mod:`caxton_auth_jwt.keyring`); signature; then ``exp``, ``nbf``, ``iat``
(within ``leeway``), ``iss`` and ``aud``, and the required claims. Any failure is an
:class:`~caxton.errors.AuthError` (401); the chain never offers the token to another
driver. A request without a bearer token is not this driver's business (None).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

from caxton.config import ConfigSection
from caxton.drivers.auth import AuthDriver, Credentials, Identity
from caxton.drivers.base import DriverContext
from caxton.errors import AuthError, first_line
from caxton_auth_jwt.keyring import KeyRing
from caxton_auth_jwt.settings import SECTION, JwtSettings

__all__ = ["JwtAuth"]

_BEARER = re.compile(r"Bearer[ ]+(\S+)[ ]*", re.IGNORECASE)
#: RFC 7519 NumericDate claims; PyJWT would accept "123" for them.
TIME_CLAIMS = ("exp", "nbf", "iat")
#: What a kid may look like; anything else is refused before any lookup.
_KID = re.compile(r"[A-Za-z0-9._:@+/=-]{1,128}")


class JwtAuth(AuthDriver):
    """Identity ``jwt:<sub>`` with the roles of ``auth.jwt.roles_claim``."""

    config_section: ClassVar[ConfigSection | None] = SECTION

    def __init__(self, config: Mapping[str, Any], context: DriverContext) -> None:
        super().__init__(config, context)
        node = context.services.get("node")
        configured = node.config["security"]["jwt_secret"] if node is not None else None
        self.settings = JwtSettings.build(self.config, configured_secret=configured)
        self.keys = KeyRing(self.settings)

    async def authenticate(self, credentials: Credentials) -> Identity | None:
        header = _authorization(credentials.headers)
        if header is None:
            return None
        match = _BEARER.fullmatch(header)
        if match is None:
            if header.lower().startswith("bearer"):
                raise AuthError("invalid token: expected 'Authorization: Bearer <token>'")
            return None  # another scheme (Basic, ...): not ours
        claims = self.verify(match.group(1))
        return self._identity(claims)

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a valid token; :class:`AuthError` saying what is wrong."""
        import jwt

        settings = self.settings
        if len(token) > settings.max_token_bytes:
            raise AuthError(f"invalid token: longer than {settings.max_token_bytes} bytes")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: not a JWT ({first_line(exc)[:200]})") from None
        # PyJWT reads "exp": "1700000000" as a number; a NumericDate is a JSON number.
        for claim in TIME_CLAIMS:
            value = unverified.get(claim, 0)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise AuthError(
                    f"invalid token: the {claim!r} claim must be a number (NumericDate)"
                )
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in settings.algorithms:
            raise AuthError(
                f"invalid token: algorithm {str(algorithm)[:16]!r} is not accepted "
                f"(auth.jwt.algorithms: {', '.join(sorted(settings.algorithms))})"
            )
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or not _KID.fullmatch(kid)):
            raise AuthError("invalid token: malformed key id (kid)")
        self.keys.refresh()
        key = self.keys.lookup(kid, algorithm)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                issuer=settings.issuer,
                audience=list(settings.audience) or None,
                leeway=settings.leeway,
                options={
                    "require": list(settings.required_claims),
                    "verify_aud": bool(settings.audience),
                    "strict_aud": False,
                },
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("invalid token: expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("invalid token: not valid yet (nbf or iat in the future)") from None
        except jwt.InvalidIssuerError:
            raise AuthError("invalid token: wrong issuer") from None
        except jwt.InvalidAudienceError:
            raise AuthError("invalid token: wrong audience") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"invalid token: missing the {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise AuthError("invalid token: bad signature") from None
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {first_line(exc)[:200]}") from None
        if settings.audience == () and "aud" in claims:
            raise AuthError("invalid token: it names an audience and auth.jwt.audience is unset")
        return claims

    def _identity(self, claims: Mapping[str, Any]) -> Identity:
        settings = self.settings
        subject = claims.get(settings.subject_claim)
        if not isinstance(subject, str) or not subject:
            raise AuthError(f"invalid token: no {settings.subject_claim!r} claim naming the caller")
        return Identity(
            name=f"jwt:{subject}",
            roles=frozenset(_roles(claims, settings.roles_claim)),
            driver="jwt",
            attributes={"claims": dict(claims)},
        )


def _authorization(headers: Mapping[str, str]) -> str | None:
    value = headers.get("Authorization")
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == "authorization"), None)
    return value


def _roles(claims: Mapping[str, Any], path: str) -> list[str]:
    value: Any = claims
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if value is None:
        return []
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list) and all(isinstance(role, str) for role in value):
        return list(value)
    raise AuthError(f"invalid token: claim {path!r} must be a list of roles or a string")
