"""``caxton cluster verify-auth``: what each node trusts, and whether the nodes agree.

A node describes its cluster security without revealing secrets: the transport mode,
the SHA-256 fingerprint of its CA certificate, the node id and expiry of its own
certificate, and short fingerprints of its gossip keys. :func:`compare` lists what
keeps two nodes from talking.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Mapping
from typing import Any

from caxton.errors import CaxtonError

__all__ = ["compare", "security_summary"]


def _fingerprint(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def security_summary(node_id: str, config: Any) -> dict[str, Any]:
    """This node's cluster security, from its config (no secret leaves the node)."""
    from caxton.transport.keyring import decode_key

    mtls = config["security.cluster.mtls"]
    keys = [decode_key(text) for text in config["security.cluster"]["gossip_keys"]]
    summary: dict[str, Any] = {
        "node_id": node_id,
        "mode": "mtls" if mtls["enabled"] else "plaintext",
        "gossip_keys": [_fingerprint(key) for key in keys],
        "ca_fingerprint": None,
        "certificate": None,
    }
    if not mtls["enabled"]:
        return summary
    from cryptography.hazmat.primitives import hashes

    from caxton.security.identity import node_id_of
    from caxton.security.pki import load_certificate

    try:
        ca = load_certificate(mtls["ca_cert"])
        summary["ca_fingerprint"] = ca.fingerprint(hashes.SHA256()).hex()[:32]
        cert = load_certificate(mtls["node_cert"])
    except CaxtonError as exc:
        summary["problems"] = [str(exc)]
        return summary
    now = datetime.datetime.now(datetime.timezone.utc)
    summary["certificate"] = {
        "node_id": node_id_of(cert),
        "issuer_matches_ca": cert.issuer == ca.subject,
        "not_after": cert.not_valid_after_utc.isoformat(),
        "expires_in_days": (cert.not_valid_after_utc - now).days,
    }
    return summary


def problems_of(summary: Mapping[str, Any]) -> list[str]:
    """What is wrong with one node's own material."""
    found = list(summary.get("problems") or ())
    cert = summary.get("certificate")
    if summary.get("mode") == "mtls" and cert:
        if cert.get("node_id") != summary.get("node_id"):
            found.append(
                f"its certificate names node {cert.get('node_id')!r}, not "
                f"{summary.get('node_id')!r}; issue one with `caxton security issue-cert`"
            )
        if not cert.get("issuer_matches_ca"):
            found.append("its certificate was not issued by its configured CA")
        if int(cert.get("expires_in_days", 0)) < 0:
            found.append("its certificate has expired")
    return found


def compare(local: Mapping[str, Any], remote: Mapping[str, Any]) -> list[str]:
    """Why ``remote`` and ``local`` cannot talk (empty: they agree)."""
    found = problems_of(remote)
    if local.get("mode") != remote.get("mode"):
        found.append(
            f"transport mode {remote.get('mode')} differs from this node's {local.get('mode')}"
        )
    elif local.get("mode") == "mtls" and local.get("ca_fingerprint") != remote.get(
        "ca_fingerprint"
    ):
        found.append(
            f"trusts CA {remote.get('ca_fingerprint')}, this node trusts "
            f"{local.get('ca_fingerprint')}"
        )
    ours, theirs = list(local.get("gossip_keys") or ()), list(remote.get("gossip_keys") or ())
    if bool(ours) != bool(theirs):
        found.append("gossip keys are configured on one node only (security.cluster.gossip_keys)")
    elif ours and theirs:
        if ours[0] not in theirs:
            found.append(f"does not have this node's primary gossip key {ours[0]}")
        if theirs[0] not in ours:
            found.append(f"encrypts with gossip key {theirs[0]}, which this node lacks")
    return found
