"""Who is on the other end: a peer's node id, proven by its certificate.

Mutual TLS proves that a peer holds *some* certificate of the cluster CA; it does not
prove which node it is. Every connection therefore starts with the peer claiming a node
id, and :func:`verify_peer_identity` checks that claim against the certificate's
``caxton://node/<id>`` SAN, so that a valid certificate of one node cannot pass for
another. :func:`verify_client_chain` checks the chain itself, for TLS stacks that do not
(aioquic does not verify client certificates, see aioquic issue #541).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from caxton.errors import PeerRejected
from caxton.security.pki import NODE_URI_PREFIX


def node_id_of(cert: x509.Certificate) -> str | None:
    """The node id in ``cert``'s ``caxton://node/<id>`` SAN, or None if it has none."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return None
    ids = [
        uri[len(NODE_URI_PREFIX) :]
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier)
        if uri.startswith(NODE_URI_PREFIX)
    ]
    return ids[0] if len(ids) == 1 else None


def verify_peer_identity(cert: x509.Certificate | bytes | None, claimed_node_id: str) -> str:
    """Check that ``cert`` (object or DER) names ``claimed_node_id``; return the id.

    Raises :class:`caxton.errors.PeerRejected` when there is no certificate, it names no
    node, or it names another node.
    """
    if cert is None:
        raise PeerRejected("peer presented no certificate")
    if isinstance(cert, bytes):
        try:
            cert = x509.load_der_x509_certificate(cert)
        except ValueError:
            raise PeerRejected("peer certificate could not be parsed") from None
    actual = node_id_of(cert)
    if actual is None:
        raise PeerRejected("peer certificate carries no caxton://node/ identity")
    if actual != claimed_node_id:
        raise PeerRejected(
            f"peer claims node id {claimed_node_id!r} but its certificate is for {actual!r}"
        )
    return actual


def verify_client_chain(
    cert: x509.Certificate | None,
    intermediates: Sequence[x509.Certificate],
    trusted: Sequence[x509.Certificate],
    *,
    now: datetime.datetime | None = None,
) -> None:
    """Verify a client certificate against the cluster CA (signature, dates, usage)."""
    if cert is None:
        raise PeerRejected("peer presented no client certificate")
    verifier = (
        PolicyBuilder()
        .store(Store(list(trusted)))
        .time(now or datetime.datetime.now(datetime.timezone.utc))
        .build_client_verifier()
    )
    try:
        verifier.verify(cert, list(intermediates))
    except VerificationError as exc:
        raise PeerRejected(f"peer certificate rejected: {exc}") from None
