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
import contextlib
import datetime
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caxton.errors import CaxtonError, ConfigError, PeerRejected, TransportError
from caxton.security import pki
from caxton.security.enrolment import (
    ENROLLED_CERT_DAYS,
    DataDirPki,
    EnrolmentAuthority,
    EnrolmentRefused,
    accept_answer,
    join_request,
    load_certificates,
    renew_request,
)
from caxton.security.join_tokens import JoinToken

if TYPE_CHECKING:
    from caxton.node import Node

log = logging.getLogger("caxton.security")

__all__ = [
    "TlsReloader",
    "prepare_node_tls",
    "serve_enrolment",
    "start_tls_reloader",
    "supplies_tls",
]

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
    if token and not node.join_addresses:
        raise ConfigError("--token needs --join HOST:PORT: the seeds to enrol through")
    if token and (mtls["enabled"] or plaintext):
        raise ConfigError(
            "--token (CAXTON_JOIN_TOKEN) makes this node's certificate itself, but the config "
            f"sets {'transport.plaintext' if plaintext else 'security.cluster.mtls'}; remove "
            f"that, or start without a token"
        )
    if not node.clustered or mtls["enabled"] or plaintext:
        enrolment = node.config["security.cluster.enrolment"]
        if enrolment["renew_before"] is not None or cert_days(node.config) != ENROLLED_CERT_DAYS:
            log.warning(
                "node %s: security.cluster.enrolment applies to the certificates of the data "
                "directory (--bootstrap, --token); with %s it does nothing",
                node.node_id,
                "security.cluster.mtls" if mtls["enabled"] else "transport.plaintext",
            )
        return
    material = DataDirPki(node.data_dir)
    if material.has_certificate():
        _use(node, material)
        return
    parsed = JoinToken.parse(token) if token else None  # a malformed token fails first
    if parsed is None and _founds_cluster(node):
        material.bootstrap(node.node_id, _hosts(node), days=cert_days(node.config))
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
        cert_days=cert_days(node.config),
    )
    try:
        transport.serve_enrolment(authority.answer)
    except CaxtonError as exc:
        log.warning("node %s holds the cluster CA but cannot enrol nodes: %s", node.node_id, exc)


# -------------------------------------------------------------------------
# Reload and renewal while the node runs
# -------------------------------------------------------------------------


def cert_days(config: Any) -> float:
    """The life of the certificates this node's CA signs, in days
    (``security.cluster.enrolment.cert_lifetime``)."""
    return float(config["security.cluster.enrolment"]["cert_lifetime"]) / 86400


#: How often the TLS files are checked for changes (and the certificate for renewal).
TLS_CHECK_INTERVAL = 2.0
#: An enrolled certificate is renewed once less than this share of its life is left.
RENEW_AT_REMAINING = 1 / 3


class TlsReloader:
    """Keeps a running node's TLS material current, without a restart.

    - **Reload**: when ``ca_cert``, ``node_cert`` or ``node_key`` change on disk (checked
      every :data:`TLS_CHECK_INTERVAL` seconds) or on SIGHUP, the transport's TLS
      contexts are rebuilt: new connections, both ways, use the new files; established
      ones carry on until they close. Files that do not load (a key that does not match
      its certificate yet, half-written) are reported and the material in use is kept.
    - **Renewal**: a node whose certificate lives in its data directory (made at
      ``--bootstrap`` or by enrolment) asks for a new one once less than a third of its
      life is left: the CA holder signs it for itself, others ask their peers over the
      enrolment exchange with their current certificate as proof.
    """

    def __init__(self, node: Node, transport: Any) -> None:
        self.node = node
        self.transport = transport
        self._files = [Path(p) for p in _tls_paths(node)]
        self._seen = self._signature()
        self._task: asyncio.Task[None] | None = None
        self.reloads = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _signature(self) -> tuple[tuple[int, int], ...]:
        signature = []
        for path in self._files:
            try:
                status = path.stat()
            except OSError:
                signature.append((0, 0))
                continue
            signature.append((status.st_mtime_ns, status.st_size))
        return tuple(signature)

    def reload(self, why: str) -> bool:
        """Rebuild the transport's TLS contexts from the files; False if they do not load."""
        try:
            self.transport.reload_tls()
        except CaxtonError as exc:
            log.warning(
                "node %s: TLS material not reloaded (%s): %s; the previous one stays in use",
                self.node.node_id,
                why,
                exc,
            )
            return False
        self.reloads += 1
        self._seen = self._signature()
        mtls = self.node.config["security.cluster.mtls"]
        cert = pki.load_certificate(mtls["node_cert"])
        log.info(
            "node %s reloaded its TLS material (%s): certificate serial %x expires %s; "
            "trusts %d CA certificate(s)",
            self.node.node_id,
            why,
            cert.serial_number,
            cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M:%SZ"),
            len(load_certificates(mtls["ca_cert"])),
        )
        return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(TLS_CHECK_INTERVAL)
            signature = self._signature()
            if signature != self._seen:
                self._seen = signature
                self.reload("its files changed")
            try:
                await self._renew_if_due()
            except CaxtonError as exc:
                log.warning("node %s: certificate renewal failed: %s", self.node.node_id, exc)

    async def _renew_if_due(self) -> None:
        material = DataDirPki(self.node.data_dir)
        files = material.files
        if str(files.node_cert) != self.node.config["security.cluster.mtls"]["node_cert"]:
            return  # certificates the operator manages (security rotate-certs)
        cert = pki.load_certificate(material.files.node_cert)  # type: ignore[arg-type]
        life = cert.not_valid_after_utc - cert.not_valid_before_utc
        left = cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)
        renew_before = self.node.config["security.cluster.enrolment"]["renew_before"]
        if left > (
            datetime.timedelta(seconds=renew_before) if renew_before else life * RENEW_AT_REMAINING
        ):
            return
        hosts = _hosts(self.node)
        if material.holds_ca():
            material.sign_own(self.node.node_id, hosts, cert_days(self.node.config))
            self.reload("certificate renewed by this node's CA")
            return
        await self._renew_through_peers(material, hosts)

    async def _renew_through_peers(self, material: DataDirPki, hosts: list[str]) -> None:
        membership = self.node.membership
        peers = [
            m.address
            for m in (membership.members() if membership is not None else [])
            if m.node_id != self.node.node_id and m.status.value == "alive" and m.address
        ]
        reasons = []
        trusted = load_certificates(material.files.ca_cert)
        for peer in peers:
            request, key = renew_request(material.files, self.node.node_id, hosts)
            try:
                answer = await self.transport.enrol(tuple(peer), request, 5.0)
                cert, bundle = accept_answer(answer, self.node.node_id, key, trusted=trusted)
            except (CaxtonError, OSError) as exc:
                reasons.append(f"{peer[0]}:{peer[1]}: {exc}")
                continue
            material.write(key, cert, bundle)
            self.reload(f"certificate renewed through {peer[0]}:{peer[1]}")
            return
        raise EnrolmentRefused(
            "no peer renewed this node's certificate: " + ("; ".join(reasons) or "no live peer")
        )


def _tls_paths(node: Node) -> list[str]:
    mtls = node.config["security.cluster.mtls"]
    return [str(mtls[key]) for key in ("ca_cert", "node_cert", "node_key") if mtls.get(key)]


def start_tls_reloader(node: Node, transport: Any) -> TlsReloader | None:
    """A running :class:`TlsReloader` for a node with mutual TLS (None otherwise)."""
    if not node.config["security.cluster.mtls"]["enabled"] or not hasattr(transport, "reload_tls"):
        return None
    reloader = TlsReloader(node, transport)
    reloader.start()
    return reloader
