"""``caxton cluster verify-auth``: what each node trusts, and whether the nodes agree.

A node describes its cluster security without revealing secrets: the transport mode,
the SHA-256 fingerprint of its CA certificate, the node id and expiry of its own
certificate, and short fingerprints of its gossip keys. :func:`compare` lists what
keeps two nodes from talking.
"""

from __future__ import annotations

import datetime
import hashlib
import time
from collections.abc import Mapping
from typing import Any

from caxton.errors import CaxtonError

__all__ = ["compare", "security_summary"]


def _fingerprint(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


#: Refusals younger than this make ``verify-auth`` report a problem.
REFUSAL_WINDOW = 300.0


def recent_refusals(transport: Any, *, since: float | None = None) -> list[dict[str, Any]]:
    """The transport's TLS and identity refusals of the last :data:`REFUSAL_WINDOW`."""
    cutoff = time.time() - REFUSAL_WINDOW if since is None else since
    entries = list(getattr(transport, "refusals", ()) or ())
    latest: dict[tuple[Any, ...], dict[str, Any]] = {}
    for entry in entries:
        if entry.get("at", 0) >= cutoff:
            latest[(entry.get("peer"), entry.get("reason"), entry.get("by_peer"))] = entry
    return list(latest.values())


def describe_refusal(entry: Mapping[str, Any]) -> str:
    if entry.get("by_peer"):
        return f"refused by {entry.get('peer')}: {entry.get('reason')}"
    return f"refused {entry.get('peer')}: {entry.get('reason')}"


def security_summary(
    node_id: str, config: Any, refusals: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """This node's cluster security, from its config (no secret leaves the node), and
    the TLS refusals its transport saw lately."""
    from caxton.transport.keyring import decode_key

    mtls = config["security.cluster.mtls"]
    keys = [decode_key(text) for text in config["security.cluster"]["gossip_keys"]]
    summary: dict[str, Any] = {
        "node_id": node_id,
        "mode": "mtls" if mtls["enabled"] else "plaintext",
        "gossip_keys": [_fingerprint(key) for key in keys],
        "ca_fingerprint": None,
        "ca_fingerprints": [],
        "certificate": None,
        "refusals": list(refusals or ()),
    }
    if not mtls["enabled"]:
        return summary
    from cryptography.hazmat.primitives import hashes

    from caxton.security.enrolment import load_certificates
    from caxton.security.identity import node_id_of
    from caxton.security.pki import load_certificate

    try:
        cas = load_certificates(mtls["ca_cert"])
        summary["ca_fingerprints"] = [ca.fingerprint(hashes.SHA256()).hex()[:32] for ca in cas]
        summary["ca_fingerprint"] = summary["ca_fingerprints"][0]
        cert = load_certificate(mtls["node_cert"])
    except CaxtonError as exc:
        summary["problems"] = [str(exc)]
        return summary
    now = datetime.datetime.now(datetime.timezone.utc)
    issuer = next((ca for ca in cas if ca.subject == cert.issuer), None)
    summary["certificate"] = {
        "node_id": node_id_of(cert),
        "issuer_matches_ca": issuer is not None,
        "issuer_fingerprint": (
            issuer.fingerprint(hashes.SHA256()).hex()[:32] if issuer is not None else None
        ),
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
    found += [describe_refusal(entry) for entry in summary.get("refusals") or ()]
    return found


def compare(local: Mapping[str, Any], remote: Mapping[str, Any]) -> list[str]:
    """Why ``remote`` and ``local`` cannot talk (empty: they agree)."""
    found = problems_of(remote)
    if local.get("mode") != remote.get("mode"):
        found.append(
            f"transport mode {remote.get('mode')} differs from this node's {local.get('mode')}"
        )
    elif local.get("mode") == "mtls":
        found += _trust_problems(local, remote)
    ours, theirs = list(local.get("gossip_keys") or ()), list(remote.get("gossip_keys") or ())
    if bool(ours) != bool(theirs):
        found.append("gossip keys are configured on one node only (security.cluster.gossip_keys)")
    elif ours and theirs:
        if ours[0] not in theirs:
            found.append(f"does not have this node's primary gossip key {ours[0]}")
        if theirs[0] not in ours:
            found.append(f"encrypts with gossip key {theirs[0]}, which this node lacks")
    return found


def _trust_problems(local: Mapping[str, Any], remote: Mapping[str, Any]) -> list[str]:
    """Whether each node trusts the CA that issued the other's certificate (during a CA
    rotation a node trusts two, and nodes of either CA agree)."""
    ours = set(local.get("ca_fingerprints") or [local.get("ca_fingerprint")])
    theirs = set(remote.get("ca_fingerprints") or [remote.get("ca_fingerprint")])
    our_issuer = (local.get("certificate") or {}).get("issuer_fingerprint")
    their_issuer = (remote.get("certificate") or {}).get("issuer_fingerprint")
    found = []
    if their_issuer is not None and our_issuer is not None:
        if their_issuer not in ours:
            found.append(f"its certificate is issued by CA {their_issuer}, which this node "
                         f"does not trust")  # fmt: skip
        if our_issuer not in theirs:
            found.append(f"does not trust CA {our_issuer}, which issued this node's "
                         f"certificate")  # fmt: skip
    elif ours != theirs:
        found.append(f"trusts CA {', '.join(sorted(map(str, theirs)))}, this node trusts "
                     f"{', '.join(sorted(map(str, ours)))}")  # fmt: skip
    return found
