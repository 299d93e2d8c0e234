"""The jwt driver against the known attacks, key rotation, claims and a real node."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from caxton.config import load_config
from caxton.drivers import Credentials, Driver, DriverContext
from caxton.errors import AuthError, ConfigError
from caxton.plugins import PluginHost
from caxton.testing import NodeFactory
from caxton.testing.conformance import AuthConformance, driver_config
from caxton_auth_jwt.driver import JwtAuth
from caxton_auth_jwt.tokens import create_token

SECRET = "s" * 40


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], key: bytes, digest: Any) -> str:
    """A token signed by hand (PyJWT rightly refuses to make some of these)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = hmac.new(key, signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64(signature)}"


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "alice", "iat": now, "exp": now + 600, "roles": ["viewer"], **extra}


def pem(public_key: Any) -> bytes:
    return bytes(
        public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def context(tmp_path: Path) -> DriverContext:
    return DriverContext("node-1", tmp_path, PluginHost(use_entry_points=False, env={}).hook)


def make(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **values: Any) -> JwtAuth:
    monkeypatch.setenv("JWT_SECRET", SECRET)
    return JwtAuth(driver_config(JwtAuth, values), context(tmp_path))


async def check(driver: JwtAuth, token: str) -> Any:
    return await driver.authenticate(Credentials(headers={"Authorization": f"Bearer {token}"}))


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def rsa_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> Path:
    path = tmp_path / "rsa.pem"
    path.write_bytes(pem(rsa_key.public_key()))
    return path


@pytest.fixture
def hs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> JwtAuth:
    return make(tmp_path, monkeypatch, issuer="caxton", audience=["api"], leeway="30s")


def hs_token(**extra: Any) -> str:
    return jwt.encode(claims(iss="caxton", aud="api", **extra), SECRET, algorithm="HS256")


# -------------------------------------------------------------------------
# Valid tokens, identity, roles
# -------------------------------------------------------------------------


async def test_valid_hs256_token(hs: JwtAuth) -> None:
    identity = await check(hs, hs_token())
    assert identity.name == "jwt:alice"
    assert identity.roles == frozenset({"viewer"})
    assert identity.driver == "jwt"


async def test_no_bearer_is_not_ours(hs: JwtAuth) -> None:
    assert await hs.authenticate(Credentials(headers={})) is None
    basic = Credentials(headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert await hs.authenticate(basic) is None
    with pytest.raises(AuthError, match="expected 'Authorization: Bearer <token>'"):
        await hs.authenticate(Credentials(headers={"Authorization": "Bearer"}))


async def test_roles_from_a_configured_nested_claim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = make(tmp_path, monkeypatch, roles_claim="realm_access.roles")
    now = int(time.time())
    token = jwt.encode(
        {"sub": "bob", "iat": now, "exp": now + 60, "realm_access": {"roles": ["operator"]}},
        SECRET,
        algorithm="HS256",
    )
    assert (await check(driver, token)).roles == frozenset({"operator"})
    spaced = jwt.encode(claims(roles="viewer developer"), SECRET, algorithm="HS256")
    assert (await make(tmp_path, monkeypatch).authenticate(
        Credentials(headers={"Authorization": f"Bearer {spaced}"})
    )).roles == frozenset({"viewer", "developer"})  # fmt: skip
    bad = jwt.encode(claims(roles={"admin": True}), SECRET, algorithm="HS256")
    with pytest.raises(AuthError, match="must be a list of roles"):
        await check(make(tmp_path, monkeypatch), bad)


# -------------------------------------------------------------------------
# The attacks
# -------------------------------------------------------------------------


async def test_alg_none_is_refused(hs: JwtAuth) -> None:
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims(iss="caxton", aud="api", roles=["admin"])).encode())
    with pytest.raises(AuthError, match="algorithm 'none' is not accepted"):
        await check(hs, f"{header}.{body}.")
    with pytest.raises(AuthError, match="not a JWT"):
        await check(hs, f"{header}.{body}")
    for variant in ("None", "NONE", "nOnE"):
        token = forge({"alg": variant}, claims(), b"", hashlib.sha256)
        with pytest.raises(AuthError, match="is not accepted"):
            await check(hs, token)


async def test_rs_hs_key_confusion_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rsa_key: rsa.RSAPrivateKey, rsa_file: Path
) -> None:
    """A token 'signed' with HS256 using the RSA public key as secret."""
    driver = make(
        tmp_path, monkeypatch, algorithms=["RS256", "HS256"], public_keys={"rsa1": str(rsa_file)}
    )
    public_pem = pem(rsa_key.public_key())
    with_kid = forge({"alg": "HS256", "kid": "rsa1"}, claims(), public_pem, hashlib.sha256)
    with pytest.raises(AuthError, match="algorithm HS256 does not fit its key"):
        await check(driver, with_kid)
    without_kid = forge({"alg": "HS256"}, claims(), public_pem, hashlib.sha256)
    with pytest.raises(AuthError, match="bad signature"):  # checked with the HS secret
        await check(driver, without_kid)
    # And with RS256 alone allowed, HS256 is not even considered.
    rs_only = make(tmp_path, monkeypatch, algorithms=["RS256"], public_keys={"rsa1": str(rsa_file)})
    with pytest.raises(AuthError, match="HS256' is not accepted"):
        await check(rs_only, with_kid)


async def test_expired_token_is_refused_and_leeway_applies(hs: JwtAuth) -> None:
    now = int(time.time())
    with pytest.raises(AuthError, match="expired"):
        await check(hs, hs_token(iat=now - 7200, exp=now - 3600))
    assert await check(hs, hs_token(iat=now - 60, exp=now - 10))  # within the 30 s leeway


async def test_not_yet_valid_token_is_refused(hs: JwtAuth) -> None:
    now = int(time.time())
    with pytest.raises(AuthError, match="not valid yet"):
        await check(hs, hs_token(nbf=now + 3600))
    with pytest.raises(AuthError, match="not valid yet"):
        await check(hs, hs_token(iat=now + 3600, exp=now + 7200))
    assert await check(hs, hs_token(nbf=now + 10))  # within the leeway


async def test_wrong_issuer_or_audience_is_refused(hs: JwtAuth) -> None:
    now = int(time.time())
    base = {"sub": "alice", "iat": now, "exp": now + 60}
    with pytest.raises(AuthError, match="wrong issuer"):
        await check(hs, jwt.encode({**base, "iss": "evil", "aud": "api"}, SECRET))
    with pytest.raises(AuthError, match="wrong audience"):
        await check(hs, jwt.encode({**base, "iss": "caxton", "aud": "other"}, SECRET))
    with pytest.raises(AuthError, match=r"missing the 'iss' claim|issuer"):
        await check(hs, jwt.encode({**base, "aud": "api"}, SECRET))
    with pytest.raises(AuthError, match="missing the 'aud' claim"):
        await check(hs, jwt.encode({**base, "iss": "caxton"}, SECRET))


async def test_audience_in_token_without_configured_audience(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = make(tmp_path, monkeypatch)
    with pytest.raises(AuthError, match="names an audience"):
        await check(driver, jwt.encode(claims(aud="elsewhere"), SECRET))


async def test_tampered_signature_or_payload_is_refused(hs: JwtAuth) -> None:
    token = hs_token()
    header, payload, signature = token.split(".")
    flipped = signature[:-2] + ("AA" if not signature.endswith("AA") else "BB")
    with pytest.raises(AuthError, match="bad signature"):
        await check(hs, f"{header}.{payload}.{flipped}")
    promoted = b64(json.dumps(claims(iss="caxton", aud="api", roles=["admin"])).encode())
    with pytest.raises(AuthError, match="bad signature"):
        await check(hs, f"{header}.{promoted}.{signature}")
    wrong_secret = jwt.encode(claims(iss="caxton", aud="api"), "x" * 40, algorithm="HS256")
    with pytest.raises(AuthError, match="bad signature"):
        await check(hs, wrong_secret)


async def test_unknown_kid_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rsa_key: rsa.RSAPrivateKey, rsa_file: Path
) -> None:
    driver = make(tmp_path, monkeypatch, algorithms=["RS256"], public_keys={"k1": str(rsa_file)})
    good = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "k1"})
    assert await check(driver, good)
    other = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "k9"})
    with pytest.raises(AuthError, match="unknown key id"):
        await check(driver, other)


@pytest.mark.parametrize(
    "kid",
    ["../../../../dev/null", "' OR '1'='1", "k1; DROP TABLE keys", "x" * 500, "k1\n", 7, ["k1"]],
)
async def test_kid_injection_is_refused(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    rsa_key: rsa.RSAPrivateKey,
    rsa_file: Path,
    kid: Any,
) -> None:
    driver = make(tmp_path, monkeypatch, algorithms=["RS256"], public_keys={"k1": str(rsa_file)})
    if isinstance(kid, str):
        token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": kid})
    else:  # PyJWT will not write a non-string kid; an attacker would
        header = b64(json.dumps({"alg": "RS256", "kid": kid}).encode())
        token = f"{header}.{b64(json.dumps(claims()).encode())}.c2ln"
    with pytest.raises(AuthError, match=r"kid|Key ID"):
        await check(driver, token)


async def test_rotated_out_key_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def jwk(key: Any, kid: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        return {**data, "kid": kid, "use": "sig"}

    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk(old, "2025"), jwk(new, "2026")]}))
    driver = make(tmp_path, monkeypatch, algorithms=["ES256"], jwks_file=str(jwks))
    by_old = jwt.encode(claims(), old, algorithm="ES256", headers={"kid": "2025"})
    by_new = jwt.encode(claims(), new, algorithm="ES256", headers={"kid": "2026"})
    assert await check(driver, by_old)
    assert await check(driver, by_new)
    jwks.write_text(json.dumps({"keys": [jwk(new, "2026")]}))  # rotation: 2025 retired
    with pytest.raises(AuthError, match="unknown key id"):
        await check(driver, by_old)
    assert await check(driver, by_new)


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", ["{n}", "{n}.0", True, None, ["{n}"]])
async def test_time_claims_given_as_strings_or_other_types_are_refused(
    hs: JwtAuth, claim: str, value: Any
) -> None:
    """PyJWT itself would read ``"exp": "1700000000"`` as a number (int("...")); we do not."""
    now = int(time.time())
    given = {"sub": "a", "iss": "caxton", "aud": "api", "iat": now, "exp": now + 600}
    given[claim] = (
        value.format(n=given.get(claim, now))
        if isinstance(value, str)
        else [str(now)]
        if isinstance(value, list)
        else value
    )
    token = forge({"alg": "HS256", "typ": "JWT"}, given, SECRET.encode(), hashlib.sha256)
    with pytest.raises(AuthError, match=f"the '{claim}' claim must be a number"):
        await check(hs, token)


async def test_missing_exp_is_refused(hs: JwtAuth) -> None:
    now = int(time.time())
    token = jwt.encode({"sub": "a", "iss": "caxton", "aud": "api", "iat": now}, SECRET)
    with pytest.raises(AuthError, match="missing the 'exp' claim"):
        await check(hs, token)


async def test_oversized_and_garbage_tokens(hs: JwtAuth) -> None:
    with pytest.raises(AuthError, match="longer than"):
        await check(hs, "a" * 9000)
    with pytest.raises(AuthError, match="not a JWT"):
        await check(hs, "not-a-token")


@pytest.mark.parametrize("kind", ["rsa", "ec", "ed25519"])
async def test_each_asymmetric_family_verifies_only_its_algorithm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, rsa_key: rsa.RSAPrivateKey
) -> None:
    key: Any = {
        "rsa": rsa_key,
        "ec": ec.generate_private_key(ec.SECP256R1()),
        "ed25519": ed25519.Ed25519PrivateKey.generate(),
    }[kind]
    algorithm = {"rsa": "RS256", "ec": "ES256", "ed25519": "EdDSA"}[kind]
    path = tmp_path / f"{kind}.pem"
    path.write_bytes(pem(key.public_key()))
    driver = make(
        tmp_path,
        monkeypatch,
        algorithms=["RS256", "ES256", "EdDSA"],
        public_keys={"k": str(path)},
    )
    assert await check(driver, jwt.encode(claims(), key, algorithm=algorithm))
    other = "ES256" if kind == "rsa" else "RS256"
    header = b64(json.dumps({"alg": other, "kid": "k"}).encode())
    body = b64(json.dumps(claims()).encode())
    with pytest.raises(AuthError, match=f"algorithm {other} does not fit its key"):
        await check(driver, f"{header}.{body}.c2ln")


# -------------------------------------------------------------------------
# Settings
# -------------------------------------------------------------------------


def test_short_hs_secret_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JWT_SECRET", "too-short-secret")
    with pytest.raises(ConfigError, match="16 bytes; at least 32 are required"):
        JwtAuth(driver_config(JwtAuth), context(tmp_path))


def test_hs_without_secret_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JWT_SECRET", raising=False)
    with pytest.raises(ConfigError, match=r"needs a secret: set security\.jwt_secret"):
        JwtAuth(driver_config(JwtAuth), context(tmp_path))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"algorithms": ["none"]}, "none not accepted"),
        ({"algorithms": []}, "is empty"),
        ({"algorithms": ["RS256"]}, "needs public keys"),
        ({"algorithms": ["RS256"], "public_keys": {"k": "/nonexistent.pem"}}, "cannot read"),
    ],
)
def test_unsafe_settings_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        make(tmp_path, monkeypatch, **values)


def test_private_key_or_symmetric_jwks_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rsa_key: rsa.RSAPrivateKey
) -> None:
    private = tmp_path / "private.pem"
    private.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ConfigError, match="not a PEM public key"):
        make(tmp_path, monkeypatch, algorithms=["RS256"], public_keys={"k": str(private)})
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{"kty": "oct", "kid": "s", "k": b64(b"x" * 32)}]}))
    with pytest.raises(ConfigError, match="symmetric"):
        make(tmp_path, monkeypatch, algorithms=["RS256"], jwks_file=str(jwks))


# -------------------------------------------------------------------------
# Conformance, tokens from the CLI, a real node
# -------------------------------------------------------------------------


class TestJwtConformance(AuthConformance):
    driver_class = JwtAuth
    entry_point_name = "jwt"
    expected_identity = "jwt:alice"

    @pytest.fixture(autouse=True)
    def secret(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("JWT_SECRET", SECRET)

    def make_driver(self, data_dir: Path) -> Driver:
        return JwtAuth(driver_config(JwtAuth), self.make_context(data_dir))

    def valid_credentials(self) -> Credentials:
        return Credentials(headers={"Authorization": f"Bearer {jwt.encode(claims(), SECRET)}"})

    def invalid_credentials(self) -> Credentials:
        forged = jwt.encode(claims(), "y" * 40)
        return Credentials(headers={"Authorization": f"Bearer {forged}"})


def test_create_token_makes_a_token_the_driver_accepts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(
        env={},
        overrides={"security.jwt_secret": SECRET, "security.jwt_expiry": "2h"},
        plugin_section_names=["jwt"],
    )
    token = create_token(config, subject="ci", roles=["operator"], now=1_000_000)
    decoded = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert decoded["exp"] - decoded["iat"] == 7200
    assert decoded["roles"] == ["operator"]
    fresh = create_token(config, subject="ci", roles=["operator"], expires_in=60)
    identity = asyncio.run(check(make(tmp_path, monkeypatch), fresh))
    assert (identity.name, identity.roles) == ("jwt:ci", frozenset({"operator"}))


async def test_token_from_the_cli_works_against_a_node(tmp_path: Path) -> None:
    from caxton.cli.main import make_cli

    data_dir = tmp_path / "cli-node"
    runner = CliRunner()
    result = runner.invoke(
        make_cli(PluginHost()),
        ["security", "token", "create", "--role", "viewer", "--expires", "10m",
         "--data-dir", str(data_dir)],
        env={"CAXTON_SECURITY_JWT_SECRET": SECRET},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    token = result.output.strip().splitlines()[-1]
    factory = NodeFactory(tmp_path / "nodes", use_entry_points=True)
    config = {
        "security.auth_enabled": True,
        "security.jwt_secret": SECRET,
        "plugins.auth": ["api-key", "jwt"],
    }
    async with factory.node(config=config) as node:
        assert node.api_address is not None
        host, port = node.api_address
        bearer = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(f"http://{host}:{port}") as http:
            async with http.get("/api/v1/agents", headers=bearer) as response:
                assert response.status == 200
            async with http.post("/api/v1/emergency/stop", headers=bearer, json={}) as response:
                assert response.status == 403
            bad = {"Authorization": f"Bearer {token[:-4]}AAAA"}
            async with http.get("/api/v1/agents", headers=bad) as response:
                assert response.status == 401
                assert "Bearer" in response.headers["WWW-Authenticate"]
