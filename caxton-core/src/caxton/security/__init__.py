"""Node certificates and mutual TLS: the cluster CA, node identity, SSL contexts."""

from __future__ import annotations

from caxton.security.identity import node_id_of, verify_client_chain, verify_peer_identity
from caxton.security.pki import (
    CertificateAuthority,
    CertStatus,
    NodeCertificate,
    cert_status,
    init_ca,
    issue_node_cert,
    load_certificate,
    rotate_node_certs,
)
from caxton.security.tls import TlsFiles, client_context, server_context

__all__ = [
    "CertStatus",
    "CertificateAuthority",
    "NodeCertificate",
    "TlsFiles",
    "cert_status",
    "client_context",
    "init_ca",
    "issue_node_cert",
    "load_certificate",
    "node_id_of",
    "rotate_node_certs",
    "server_context",
    "verify_client_chain",
    "verify_peer_identity",
]
