"""The ``[auth.jwt]`` config section and the checked settings built from it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from caxton.config import ConfigSection, Field
from caxton.errors import ConfigError

__all__ = [
    "ASYMMETRIC",
    "HMAC",
    "MIN_SECRET_BYTES",
    "SECTION",
    "JwtSettings",
]

#: Shortest HS secret accepted (RFC 7518 3.2: at least the hash size of HS256).
MIN_SECRET_BYTES = 32
HMAC = frozenset({"HS256", "HS384", "HS512"})
#: Asymmetric algorithms by the key type that verifies them.
ASYMMETRIC: Mapping[str, frozenset[str]] = {
    "rsa": frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
    "ec": frozenset({"ES256", "ES384", "ES512"}),
    "okp": frozenset({"EdDSA"}),
}
SUPPORTED = HMAC.union(*ASYMMETRIC.values())

# fmt: off
SECTION = ConfigSection("auth.jwt", (
    Field("algorithms", "list[str]", ["HS256"],
          "Accepted algorithms (allow-list); 'none' is never accepted"),
    Field("secret_env", "str", "JWT_SECRET",
          "Environment variable with the HS secret when security.jwt_secret is unset"),
    Field("hs_kid", "str", None, "kid of the HS secret (tokens may then name it)",
          optional=True),
    Field("public_keys", "table", {}, "kid -> PEM file of a public key (RS/ES/EdDSA)"),
    Field("jwks_file", "str", None, "JWKS file of public keys; re-read when it changes",
          optional=True),
    Field("issuer", "str", None, "Required iss", optional=True),
    Field("audience", "list[str]", [], "Accepted aud values (required when set)"),
    Field("leeway", "duration", "30s", "Clock skew allowed on exp, nbf and iat"),
    Field("required_claims", "list[str]", ["exp", "iat"], "Claims a token must carry"),
    Field("roles_claim", "str", "roles",
          "Claim with the roles: a list or a space-separated string; dots for nesting"),
    Field("subject_claim", "str", "sub", "Claim naming the caller"),
    Field("max_token_bytes", "size", "8KB", "Longer tokens are refused unread",
          minimum=256),
), "JWT bearer tokens (caxton-auth-jwt)", owner="caxton-auth-jwt")
# fmt: on


@dataclass(frozen=True)
class JwtSettings:
    algorithms: frozenset[str]
    secret: bytes | None
    hs_kid: str | None
    public_keys: Mapping[str, str]
    jwks_file: str | None
    issuer: str | None
    audience: tuple[str, ...]
    leeway: float
    required_claims: tuple[str, ...]
    roles_claim: str
    subject_claim: str
    max_token_bytes: int

    @classmethod
    def build(
        cls,
        values: Mapping[str, Any],
        *,
        configured_secret: str | None,
        env: Mapping[str, str] | None = None,
    ) -> JwtSettings:
        """Checked settings: :class:`ConfigError` naming the key for anything unsafe."""
        env = os.environ if env is None else env
        algorithms = frozenset(values["algorithms"])
        unknown = sorted(a for a in algorithms if a not in SUPPORTED)
        if unknown:
            raise ConfigError(
                f"auth.jwt.algorithms: {', '.join(unknown)} not accepted; "
                f"choose from {', '.join(sorted(SUPPORTED))} ('none' never)"
            )
        if not algorithms:
            raise ConfigError("auth.jwt.algorithms is empty: list the accepted algorithms")
        secret_text = configured_secret or env.get(values["secret_env"]) or None
        secret = secret_text.encode("utf-8") if secret_text else None
        if algorithms & HMAC:
            if secret is None:
                raise ConfigError(
                    f"auth.jwt.algorithms has {', '.join(sorted(algorithms & HMAC))}, which "
                    f'needs a secret: set security.jwt_secret (e.g. "${{JWT_SECRET}}") or '
                    f"${values['secret_env']}"
                )
            if len(secret) < MIN_SECRET_BYTES:
                raise ConfigError(
                    f"the JWT HS secret is {len(secret)} bytes; at least {MIN_SECRET_BYTES} "
                    f"are required (generate one: python -c 'import secrets; "
                    f"print(secrets.token_urlsafe(48))')"
                )
        else:
            secret = None  # never used: no HS algorithm is accepted
        public_keys = {str(k): str(v) for k, v in dict(values["public_keys"]).items()}
        asymmetric = algorithms - HMAC
        if asymmetric and not public_keys and not values["jwks_file"]:
            raise ConfigError(
                f"auth.jwt.algorithms has {', '.join(sorted(asymmetric))}, which needs "
                f"public keys: set auth.jwt.public_keys or auth.jwt.jwks_file"
            )
        return cls(
            algorithms=algorithms,
            secret=secret,
            hs_kid=values["hs_kid"],
            public_keys=public_keys,
            jwks_file=values["jwks_file"],
            issuer=values["issuer"],
            audience=tuple(values["audience"]),
            leeway=float(values["leeway"]),
            required_claims=tuple(values["required_claims"]),
            roles_claim=values["roles_claim"],
            subject_claim=values["subject_claim"],
            max_token_bytes=int(values["max_token_bytes"]),
        )
