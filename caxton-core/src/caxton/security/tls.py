"""TLS 1.3 contexts for mutual authentication between nodes.

The server context *requires* a client certificate (Python's default server context
does not ask for one). Neither side checks host names: peers are dialled by address and
identified by node id instead (:func:`caxton.security.identity.verify_peer_identity`).
Under TLS 1.3 a client whose certificate the server refuses only learns it on its first
read, so callers must not treat a finished handshake as acceptance.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from caxton.errors import CertificateError


@dataclass(frozen=True)
class TlsFiles:
    """What a node's ``[security.cluster.mtls]`` names: the CA and its own pair.

    ``node_cert``/``node_key`` may be None only for a client (tests use that to play
    a peer without a certificate).
    """

    ca_cert: Path
    node_cert: Path | None
    node_key: Path | None

    @classmethod
    def from_dir(cls, directory: str | Path) -> TlsFiles:
        """``ca.crt``, ``node.crt`` and ``node.key`` in one directory."""
        base = Path(directory)
        return cls(base / "ca.crt", base / "node.crt", base / "node.key")


def _base_context(purpose: int, files: TlsFiles) -> ssl.SSLContext:
    context = ssl.SSLContext(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_verify_locations(cafile=str(files.ca_cert))
    except (OSError, ssl.SSLError) as exc:
        raise CertificateError(f"cannot load CA certificate {files.ca_cert}: {exc}") from None
    if files.node_cert is not None:
        try:
            context.load_cert_chain(str(files.node_cert), str(files.node_key or files.node_cert))
        except (OSError, ssl.SSLError) as exc:
            raise CertificateError(
                f"cannot load node certificate {files.node_cert} / key {files.node_key}: {exc}"
            ) from None
    return context


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """A TLS 1.3 server context that refuses clients without a CA-signed certificate."""
    if files.node_cert is None:
        raise CertificateError("a server needs node_cert and node_key")
    return _base_context(ssl.PROTOCOL_TLS_SERVER, files)


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """A TLS 1.3 client context presenting the node certificate, verifying the server's."""
    context = _base_context(ssl.PROTOCOL_TLS_CLIENT, files)
    context.check_hostname = False
    return context


def anonymous_client_context() -> ssl.SSLContext:
    """A TLS 1.3 client context with no certificate that verifies none: only for
    enrolment, whose messages are authenticated by the join token
    (:mod:`caxton.security.enrolment`)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
