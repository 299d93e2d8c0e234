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


#: OpenSSL's words for why a handshake failed -> what an operator should read. The
#: refusing side sees the verification error, the refused side the alert it was sent.
_WRONG_CA = "its certificate is not signed by a CA this node trusts (wrong CA)"
_TLS_REASONS = (
    ("unable to get local issuer certificate", _WRONG_CA),
    ("self-signed certificate in certificate chain", _WRONG_CA),
    ("unable to get issuer certificate", _WRONG_CA),
    ("certificate has expired", "its certificate has expired"),
    # The same refusals in the words of cryptography's verifier (the QUIC listener's).
    ("candidates exhausted", _WRONG_CA),
    ("not valid at validation time", "its certificate has expired or is not valid yet"),
    ("certificate is not yet valid", "its certificate is not valid yet (check the clocks)"),
    ("peer did not return a certificate", "it presented no certificate"),
    ("alert unknown ca", "the peer does not trust the CA of this node's certificate (wrong CA)"),
    ("alert certificate expired", "the peer says this node's certificate has expired"),
    ("alert certificate required", "the peer requires a certificate; this node showed none"),
    ("alert bad certificate", "the peer refused this node's certificate"),
    ("alert certificate unknown", "the peer refused this node's certificate"),
    ("wrong version number", "the peer does not speak TLS (plaintext on one side only?)"),
)


def explain_tls_error(error: BaseException | str, *, by_peer: bool = False) -> str:
    """A TLS handshake failure in an operator's words (the raw text when unknown);
    ``by_peer``: the peer's verification failed on this node's certificate."""
    text = str(error)
    lowered = text.lower()
    for marker, meaning in _TLS_REASONS:
        if marker in lowered:
            if by_peer and meaning.startswith("its certificate"):
                return "this node's" + meaning[3:].replace("this node trusts", "the peer trusts")
            return meaning
    return text
