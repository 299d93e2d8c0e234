"""Enrolment and renewal with the cluster CA, over real transports in one process.

Tokens the CA holder refuses (revoked, of another CA, with a wrong secret, for a live
member's node id) are refused over tcp and quic with the reason, and spend nothing
(the process tests in tests/cluster/test_join_tokens.py cover reused and expired ones).

A node whose certificate from its data directory has less than a third of its life left
asks a CA holder for a new one with its current certificate as proof; the CA holder
renews its own by itself. The node renewing here is a small stand-in (what
:class:`caxton.security.node_tls.TlsReloader` reads of a node); the transports, the
CA holder and the files are real.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from support import run_caxton

from caxton.drivers.base import DriverContext
from caxton.errors import CaxtonError
from caxton.security import pki
from caxton.security.enrolment import (
    DataDirPki,
    EnrolmentAuthority,
    EnrolmentRefused,
    accept_answer,
    join_request,
)
from caxton.security.join_tokens import JoinToken, TokenStore
from caxton.security.node_tls import TlsReloader
from caxton.transport.settings import TransportSettings
from caxton_transport_tcp.driver import TcpTransport


def short_lived(material: DataDirPki, ca: DataDirPki, node_id: str) -> None:
    """Give ``node_id`` a certificate of ``ca`` with 6 minutes of life, 5 of them gone."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = pki.sign_node_key(
        pki.load_certificate(ca.ca_dir / pki.CA_CERT),
        pki.load_private_key(ca.ca_dir / pki.CA_KEY),
        key.public_key(),
        node_id,
        ["127.0.0.1"],
        days=6 / 1440,
        valid_from=datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5),
    )
    material.write(key, cert, (ca.ca_dir / pki.CA_CERT).read_bytes())


def stand_in(node_id: str, material: DataDirPki, peers: list[Any]) -> Any:
    files = material.files
    config = {
        "security.cluster.mtls": {
            "enabled": True,
            "ca_cert": str(files.ca_cert),
            "node_cert": str(files.node_cert),
            "node_key": str(files.node_key),
        },
        "coordination.cluster": {"bind_addr": "127.0.0.1:0", "advertise_addr": ""},
        "security.cluster.enrolment": {"cert_lifetime": 90 * 86400.0, "renew_before": None},
    }
    membership = SimpleNamespace(members=lambda: peers)
    return SimpleNamespace(
        node_id=node_id, data_dir=material.data_dir, config=config, membership=membership
    )


def transport(node_id: str, material: DataDirPki, tmp_path: Path) -> TcpTransport:
    context = DriverContext(node_id=node_id, data_dir=tmp_path, hook=None)
    return TcpTransport({}, context, settings=TransportSettings(node_id, tls=material.files))


def expiry(material: DataDirPki) -> datetime.datetime:
    assert material.files.node_cert is not None
    return pki.load_certificate(material.files.node_cert).not_valid_after_utc


async def noop(frame: Any) -> None:
    return None


async def test_a_node_renews_through_the_ca_holder_and_the_holder_by_itself(
    tmp_path: Path,
) -> None:
    holder = DataDirPki(tmp_path / "a")
    holder.bootstrap("a", ["127.0.0.1"])
    server = transport("a", holder, tmp_path)
    server.serve_enrolment(EnrolmentAuthority(holder.ca_dir, "a").answer)
    address = await server.listen(("127.0.0.1", 0), noop, lambda *_: None)

    joined = DataDirPki(tmp_path / "b")
    short_lived(joined, holder, "b")
    before = expiry(joined)
    client = transport("b", joined, tmp_path)
    member = SimpleNamespace(node_id="a", address=address, status=SimpleNamespace(value="alive"))
    reloader = TlsReloader(stand_in("b", joined, [member]), client)
    try:
        await reloader._renew_if_due()
        assert expiry(joined) > before + datetime.timedelta(days=80)
        assert reloader.reloads == 1
        await client.connection(address, 5)  # the renewed pair is accepted over mTLS

        # Not due any more: nothing happens.
        await reloader._renew_if_due()
        assert reloader.reloads == 1

        # The CA holder renews its own certificate with its CA, no peer needed.
        short_lived(holder, holder, "a")
        own = TlsReloader(stand_in("a", holder, []), server)
        await own._renew_if_due()
        assert expiry(holder) > before + datetime.timedelta(days=80)
        assert own.reloads == 1
    finally:
        await client.close()
        await server.close()


async def test_a_renewal_needs_a_valid_certificate_of_that_node(tmp_path: Path) -> None:
    holder = DataDirPki(tmp_path / "a")
    holder.bootstrap("a")
    server = transport("a", holder, tmp_path)
    server.serve_enrolment(EnrolmentAuthority(holder.ca_dir, "a").answer)
    address = await server.listen(("127.0.0.1", 0), noop, lambda *_: None)

    stranger = DataDirPki(tmp_path / "s")
    stranger.bootstrap("s")  # its own CA: the holder does not trust it
    short_lived(stranger, stranger, "s")
    client = transport("s", stranger, tmp_path)
    member = SimpleNamespace(node_id="a", address=address, status=SimpleNamespace(value="alive"))
    (stranger.ca_dir / pki.CA_KEY).unlink()  # not a CA holder: it must ask the peer
    reloader = TlsReloader(stand_in("s", stranger, [member]), client)
    try:
        with pytest.raises(CaxtonError, match="no peer renewed this node's certificate"):
            await reloader._renew_if_due()
        assert reloader.reloads == 0
    finally:
        await client.close()
        await server.close()


@pytest.fixture(params=["tcp", "quic"])
def driver(request: pytest.FixtureRequest) -> Any:
    if request.param == "tcp":
        return TcpTransport
    from caxton_transport_quic.driver import QuicTransport

    return QuicTransport


async def test_refused_tokens_say_why_and_spend_nothing(driver: Any, tmp_path: Path) -> None:
    holder = DataDirPki(tmp_path / "a")
    holder.bootstrap("a", ["127.0.0.1"])
    context = DriverContext(node_id="a", data_dir=tmp_path, hook=None)
    server = driver({}, context, settings=TransportSettings("a", tls=holder.files))
    server.serve_enrolment(EnrolmentAuthority(holder.ca_dir, "a", is_member="b".__eq__).answer)
    address = await server.listen(("127.0.0.1", 0), noop, lambda *_: None)
    tokens = TokenStore(holder.ca_dir)
    revoked = tokens.create(60)
    tokens.revoke(revoked.token_id)
    other = DataDirPki(tmp_path / "other")
    other.bootstrap("o")
    foreign = TokenStore(other.ca_dir).create(60)
    spare = tokens.create(60)
    guessed = JoinToken(spare.ca_fingerprint, spare.token_id, bytes(32))
    client_context = DriverContext(node_id="c", data_dir=tmp_path, hook=None)
    client = driver({}, client_context, settings=TransportSettings("c", enrolling=True))
    try:
        for token, node_id, reason in [
            (revoked, "c", f"join token {revoked.token_id} was revoked"),
            (foreign, "c", f"join token {foreign.token_id} is unknown to this CA"),
            (guessed, "c", f"join token {spare.token_id}: wrong secret"),
            (spare, "b", "node id 'b' is a live member of the cluster already"),
            (spare, "a", "node id 'a' is a live member of the cluster already"),
        ]:
            request, key = join_request(token, node_id)
            answer = await client.enrol(address, request, 5)
            with pytest.raises(EnrolmentRefused, match=reason):
                accept_answer(answer, node_id, key, token=token)
        [record] = [r for r in tokens.list() if r.token_id == spare.token_id]
        assert (record.used, record.status(0)) == (0, "valid")
        request, key = join_request(spare, "c")  # the spare one still works
        cert, _ = accept_answer(await client.enrol(address, request, 5), "c", key, token=spare)
        assert cert.subject.rfc4514_string() == "CN=c"
    finally:
        await client.close()
        await server.close()


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--token", "CXJ1.x"], "Error: --token needs --join HOST:PORT"),
        (["--join", "127.0.0.1:9", "--token", "CXJ1.x"], "Error: the join token is malformed"),
    ],
)
def test_a_token_without_seeds_or_malformed_is_one_line(
    tmp_path: Path, args: list[str], line: str
) -> None:
    started = run_caxton(
        "server", "start", "--data-dir", str(tmp_path / "d"), "--api-addr", "127.0.0.1:0",
        "--metrics-addr", "127.0.0.1:0", *args,
    )  # fmt: skip
    assert started.returncode == 1
    assert started.stderr.strip().splitlines()[-1].startswith(line), started.stderr
    assert "CXJ1.x" not in started.stderr  # a token, even a wrong one, is not echoed
