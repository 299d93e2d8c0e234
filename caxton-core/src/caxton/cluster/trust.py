"""Which control operations a node accepts only from an authenticated cluster peer.

Most control ops only read or spread the registry. Those that make a node run code or
drop an agent (``deploy``, ``replica``, ``holdings``, ``claim``) carry their body
*sealed*: :meth:`PeerTrust.seal` wraps ``[sender, body]``, :meth:`PeerTrust.open`
checks who sent it:

- with mutual TLS (``security.cluster.mtls.enabled`` and ``verify_peer``) the transport
  verified the sender's certificate against its node id, so the frame's sender is
  trusted; the sealed body is plain msgpack and must name the same sender;
- otherwise, with gossip keys (``security.cluster.gossip_keys``), the body is
  AES-GCM-sealed with the primary key: only a holder of a cluster key can make one;
- plaintext without gossip keys authenticates no one, and these ops are refused.

Liveness is not required: a node that just joined may seal before this node sees it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from caxton.cluster import wire
from caxton.errors import CaxtonError, Forbidden
from caxton.transport.keyring import Keyring

if TYPE_CHECKING:
    from caxton.node import Node

__all__ = ["PeerTrust"]


class PeerTrust:
    """Seals this node's privileged control bodies and checks those it receives."""

    def __init__(self, node: Node) -> None:
        self.node = node
        mtls = node.config["security.cluster.mtls"]
        self.keyring = Keyring.from_config(node.config["security.cluster"]["gossip_keys"])
        self.mode: str | None
        if mtls["enabled"] and mtls["verify_peer"]:
            self.mode = "mtls"
        elif self.keyring:
            self.mode = "keyring"
        else:
            self.mode = None

    def seal(self, body: Any) -> bytes:
        """``[this node's id, body]``, sealed with the gossip key unless mTLS is on."""
        payload = wire.pack([self.node.node_id, body])
        return self.keyring.seal(payload) if self.mode == "keyring" else payload

    def open(self, op: str, frame_sender: str, sealed: Any) -> tuple[str, Any]:
        """``(sender, body)`` of a sealed body; :class:`Forbidden` when it is not from an
        authenticated cluster peer."""
        if self.mode is None:
            raise Forbidden(
                f"node {self.node.node_id} refuses the cluster operation '{op}': its "
                f"cluster transport authenticates no peer; enable security.cluster.mtls or "
                f"set security.cluster.gossip_keys on every node"
            )
        if not isinstance(sealed, bytes):
            raise Forbidden(f"the cluster operation '{op}' came without a sealed body")
        payload = sealed if self.mode == "mtls" else self.keyring.open(sealed)
        if payload is None:
            raise Forbidden(
                f"node {self.node.node_id} refuses the cluster operation '{op}': it is not "
                f"sealed with one of this node's security.cluster.gossip_keys"
            )
        try:
            sender, body = wire.unpack(payload)
        except (CaxtonError, TypeError, ValueError):
            raise Forbidden(f"the cluster operation '{op}' has a malformed body") from None
        if not isinstance(sender, str) or (
            (self.mode == "mtls" or frame_sender) and sender != frame_sender
        ):
            raise Forbidden(
                f"the cluster operation '{op}' names sender {sender!r} but came from "
                f"{frame_sender or 'an unidentified peer'!r}"
            )
        return sender, body
