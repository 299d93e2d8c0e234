"""What every transport driver needs to know, whatever its wire: :class:`TransportSettings`.

Built from the node's configuration by :meth:`TransportSettings.from_config` (sections
``transport``, ``messaging``, ``security.cluster`` and ``security.cluster.mtls``) or
directly in tests. Each plugin's own tuning keys live in its own section
(``transport.tcp``, ``transport.quic``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from caxton.errors import ConfigError
from caxton.security.tls import TlsFiles
from caxton.transport.keyring import Keyring

if TYPE_CHECKING:
    from caxton.config import Config

MTLS_HINT = (
    "node-to-node traffic needs mutual TLS: set security.cluster.mtls.enabled = true with "
    "ca_cert, node_cert and node_key (make them with 'caxton security init-ca' and "
    "'caxton security issue-cert'), or start the first node with --bootstrap (it makes the "
    "cluster CA) and the others with --token (from 'caxton cluster token create'), or set "
    "transport.plaintext = true for local development"
)


@dataclass
class TransportSettings:
    node_id: str
    #: The mTLS material; None only in plaintext mode.
    tls: TlsFiles | None = None
    #: Unencrypted, unauthenticated node traffic. Must be asked for explicitly.
    plaintext: bool = False
    #: A node with no certificate yet: the transport only enrols (no TLS material).
    enrolling: bool = False
    #: Check that a peer's certificate names the node id it claims.
    verify_peer: bool = True
    #: Encrypts gossip datagrams that travel outside TLS (UDP in plaintext mode).
    keyring: Keyring = field(default_factory=Keyring)
    max_frame_size: int = 16 * 1024 * 1024
    connect_timeout: float = 5.0
    #: Time a new connection has to complete TLS and the HELLO exchange.
    handshake_timeout: float = 5.0
    #: Pack frames queued in the same event-loop turn into one envelope.
    batching: bool = True
    batch_max_bytes: int = 64 * 1024
    compression: bool = False
    compress_over: int = 1024
    #: Outbound bytes buffered per connection before senders wait (back-pressure).
    high_water: int = 1024 * 1024
    #: Inbound bytes buffered per connection before the transport stops reading.
    inbound_high_water: int = 1024 * 1024
    #: Concurrent REQUEST handlers per connection before the transport stops reading.
    max_inflight_requests: int = 256
    #: How long :meth:`close` waits for queued frames and in-flight requests.
    drain_timeout: float = 5.0
    backoff_initial: float = 0.05
    backoff_max: float = 2.0
    #: Interval of PING records that measure the round-trip time (0: never).
    ping_interval: float = 5.0

    def __post_init__(self) -> None:
        if self.tls is None and not self.plaintext and not self.enrolling:
            raise ConfigError(MTLS_HINT)
        if self.tls is not None and self.plaintext:
            raise ConfigError(
                "transport.plaintext = true contradicts security.cluster.mtls.enabled = true; "
                "choose one"
            )
        if self.max_frame_size < 1024:
            raise ConfigError("transport.max_frame_size must be at least 1KB")

    @property
    def compress_threshold(self) -> int | None:
        return self.compress_over if self.compression else None

    @classmethod
    def from_config(cls, config: Config, node_id: str) -> TransportSettings:
        transport = config["transport"]
        mtls = config["security.cluster.mtls"]
        tls: TlsFiles | None = None
        if mtls["enabled"]:
            missing = [k for k in ("ca_cert", "node_cert", "node_key") if not mtls.get(k)]
            if missing:
                raise ConfigError(
                    f"security.cluster.mtls is enabled but {', '.join(missing)} "
                    f"{'is' if len(missing) == 1 else 'are'} not set"
                )
            tls = TlsFiles(Path(mtls["ca_cert"]), Path(mtls["node_cert"]), Path(mtls["node_key"]))
        return cls(
            node_id=node_id,
            tls=tls,
            plaintext=bool(transport["plaintext"]),
            verify_peer=bool(mtls["verify_peer"]),
            keyring=Keyring.from_config(config["security.cluster"]["gossip_keys"]),
            max_frame_size=int(transport["max_frame_size"]),
            connect_timeout=float(transport["connect_timeout"]),
            handshake_timeout=float(transport["connect_timeout"]),
            compression=bool(config["messaging"]["enable_compression"]),
        )
