"""Mutual TLS with no setup: the node side of join tokens (docs/design/0007).

:func:`prepare_node_tls` runs when a clustered node starts, before its checks:

- a node whose config names no certificates (``security.cluster.mtls`` off) and that is
  not in plaintext mode uses the material in its data directory
  (:class:`caxton.security.enrolment.DataDirPki`): ``certs/`` if it has them (a
  restart); else, started with ``--bootstrap``, it makes the cluster CA in ``ca/`` and
  its own certificate; else, with a join token (``--token``, ``CAXTON_JOIN_TOKEN``), it
  enrols through its seeds;
- the config then names those files, so everything after (the transport, ``verify-auth``,
  ``cert-status``) sees an ordinary mTLS node.

:func:`serve_enrolment` makes a node holding ``ca/ca.key`` answer enrolments on its
cluster transport.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from caxton.errors import CaxtonError, ConfigError, PeerRejected, TransportError
from caxton.security.enrolment import (
    DataDirPki,
    EnrolmentAuthority,
    EnrolmentRefused,
    accept_answer,
    join_request,
)
from caxton.security.join_tokens import JoinToken

if TYPE_CHECKING:
    from caxton.node import Node

log = logging.getLogger("caxton.security")

__all__ = ["prepare_node_tls", "serve_enrolment", "supplies_tls"]

#: How long a joining node keeps trying seeds that do not answer (not those that refuse).
ENROL_PATIENCE = 60.0
#: Where the config's mTLS values come from when the data directory supplies them.
SOURCE = "data directory"


def _hosts(node: Node) -> list[str]:
    from caxton.units import parse_address

    cluster = node.config["coordination.cluster"]
    hosts: list[str] = []
    for key in ("bind_addr", "advertise_addr"):
        value = cluster.get(key)
        if not value:
            continue
        try:
            host = parse_address(str(value))[0]
        except ValueError:
            continue
        if host not in {"0.0.0.0", "::", ""} and host not in hosts:
            hosts.append(host)
    return hosts


def _use(node: Node, material: DataDirPki) -> None:
    files = material.files
    mtls = node.config["security.cluster.mtls"]
    mtls.update(
        enabled=True,
        ca_cert=str(files.ca_cert),
        node_cert=str(files.node_cert),
        node_key=str(files.node_key),
    )
    for key in ("enabled", "ca_cert", "node_cert", "node_key"):
        node.config.sources[f"security.cluster.mtls.{key}"] = SOURCE


async def prepare_node_tls(node: Node, token: str | None) -> None:
    """Give a clustered node its mTLS material; see the module docstring."""
    mtls = node.config["security.cluster.mtls"]
    plaintext = node.config["transport"]["plaintext"]
    if token and (mtls["enabled"] or plaintext):
        raise ConfigError(
            "--token (CAXTON_JOIN_TOKEN) makes this node's certificate itself, but the config "
            f"sets {'transport.plaintext' if plaintext else 'security.cluster.mtls'}; remove "
            f"that, or start without a token"
        )
    if not node.clustered or mtls["enabled"] or plaintext:
        return
    material = DataDirPki(node.data_dir)
    if material.has_certificate():
        _use(node, material)
        return
    parsed = JoinToken.parse(token) if token else None  # a malformed token fails first
    if parsed is None and _founds_cluster(node):
        material.bootstrap(node.node_id, _hosts(node))
        from caxton.security.join_tokens import TokenStore

        fingerprint = TokenStore(material.ca_dir).fingerprint()
        log.info(
            "node %s made the cluster CA in %s (fingerprint %s...); let other nodes join "
            "with a token from `caxton cluster token create --data-dir %s`",
            node.node_id,
            material.ca_dir,
            fingerprint[:16],
            node.data_dir,
        )
        _use(node, material)
        return
    if parsed is None:
        return  # the checks say what is missing (mTLS, plaintext, or a token)
    if not node.join_addresses:
        raise ConfigError("--token needs --join HOST:PORT: the seeds to enrol through")
    await _enrol(node, material, parsed)
    _use(node, material)


def supplies_tls(node: Node, token: str | None) -> bool:
    """Whether :func:`prepare_node_tls` will give this node its mTLS material (the
    checks then do not ask for certificates in the config)."""
    mtls = node.config["security.cluster.mtls"]
    if mtls["enabled"] or node.config["transport"]["plaintext"]:
        return False
    return bool(token) or DataDirPki(node.data_dir).has_certificate() or _founds_cluster(node)


def _founds_cluster(node: Node) -> bool:
    """Started with ``--bootstrap``: the first node of a new cluster makes its CA."""
    return bool(node.bootstrap)


async def _enrol(node: Node, material: DataDirPki, token: JoinToken) -> None:
    from caxton.membership.settings import parse_seeds
    from caxton.transport import ConnectionTransport
    from caxton.transport.settings import TransportSettings

    seeds = parse_seeds(list(node.join_addresses))
    name = node.config["plugins"]["transport"]
    driver_class = node.host.driver_class("transport", name)
    if not issubclass(driver_class, ConnectionTransport):
        raise ConfigError(f"the {name} transport cannot enrol nodes: use tcp or quic")
    settings = TransportSettings(
        node.node_id,
        enrolling=True,
        connect_timeout=float(node.config["transport"]["connect_timeout"]),
        max_frame_size=int(node.config["transport"]["max_frame_size"]),
    )
    transport = driver_class(node.host.driver_config(driver_class, node.config), node.context,
                             settings=settings)  # fmt: skip
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ENROL_PATIENCE
    try:
        while True:
            unreachable: list[str] = []
            for seed in seeds:
                where = f"{seed[0]}:{seed[1]}"
                request, key = join_request(token, node.node_id, _hosts(node))
                try:
                    answer = await transport.enrol(seed, request, settings.connect_timeout)
                    cert, bundle = accept_answer(answer, node.node_id, key, token=token)
                except (EnrolmentRefused, PeerRejected) as exc:
                    raise EnrolmentRefused(f"enrolment through {where} refused: {exc}") from None
                except (TransportError, OSError, asyncio.TimeoutError) as exc:
                    unreachable.append(f"{where}: {exc or type(exc).__name__}")
                    continue
                material.write(key, cert, bundle)
                log.info(
                    "node %s enrolled through %s with join token %s; certificate in %s",
                    node.node_id,
                    where,
                    token.token_id,
                    material.certs_dir,
                )
                return
            if loop.time() >= deadline:
                raise EnrolmentRefused(
                    f"no seed answered the enrolment within {ENROL_PATIENCE:g}s: "
                    + "; ".join(unreachable)
                )
            log.info("node %s: no seed answered the enrolment yet (%s); retrying",
                     node.node_id, "; ".join(unreachable))  # fmt: skip
            await asyncio.sleep(1.0)
    finally:
        await transport.close()


def serve_enrolment(node: Node, transport: Any) -> None:
    """Answer enrolments on ``transport`` when this node holds the cluster CA."""
    material = DataDirPki(node.data_dir)
    if not material.holds_ca() or not hasattr(transport, "serve_enrolment"):
        return

    def is_member(node_id: str) -> bool:
        membership = node.membership
        if membership is None:
            return False
        return any(
            m.node_id == node_id and m.status.value in {"alive", "suspect"}
            for m in membership.members()
        )

    authority = EnrolmentAuthority(
        material.ca_dir,
        node.node_id,
        is_member=is_member,
        trusted_bundle=node.config["security.cluster.mtls"]["ca_cert"] or None,
    )
    try:
        transport.serve_enrolment(authority.answer)
    except CaxtonError as exc:
        log.warning("node %s holds the cluster CA but cannot enrol nodes: %s", node.node_id, exc)
