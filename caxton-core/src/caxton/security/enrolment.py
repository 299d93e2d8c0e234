"""Enrolment: a node gets its certificate from the cluster CA with a join token.

The exchange is one request and one answer (msgpack maps), carried by the transport's
``ENROL`` record over a TLS session whose client shows no certificate yet
(:meth:`caxton.transport.ConnectionTransport.enrol`). TLS keeps it private; what makes
it safe are the token's HMACs and the CA fingerprint, so a man in the middle learns
nothing it could use:

1. The joining node makes its key pair (the private key never leaves it) and a CSR, and
   sends ``{kind: "join", token_id, node_id, csr, mac}``, ``mac`` = HMAC(secret,
   token_id, node_id, csr).
2. The CA holder (:class:`EnrolmentAuthority`) checks the MAC, spends one use of the
   token, refuses a node id that is a live member already, signs the CSR's key for that
   node id, and answers ``{ok, cert, ca, mac}``, ``mac`` = HMAC(secret, cert, ca).
3. The joining node (:func:`accept_answer`) checks the answer's MAC, that a CA in the
   bundle has the token's fingerprint, that the certificate is signed by it, names
   this node and holds its key; only then it writes ``certs/`` and joins over mTLS.

Renewal uses the same exchange without a token: ``{kind: "renew", node_id, csr, cert,
signature}``, the current certificate and a signature of the CSR by its key; the CA
holder signs a new certificate while the current one is valid and names that node.

A node keeps its TLS material in its data directory (:class:`DataDirPki`): ``ca/``
(the CA, on the node that made it at ``--bootstrap``) and ``certs/`` (its own pair and
the CA bundle it trusts).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from caxton.errors import CaxtonError, CertificateError
from caxton.security import pki
from caxton.security.join_tokens import JoinToken, JoinTokenError, TokenStore, ca_fingerprint
from caxton.security.tls import TlsFiles

log = logging.getLogger("caxton.security.enrolment")

__all__ = [
    "DataDirPki",
    "EnrolmentAuthority",
    "EnrolmentRefused",
    "accept_answer",
    "join_request",
    "renew_request",
]

#: Lifetime of the certificates the CA holder signs for enrolled nodes.
ENROLLED_CERT_DAYS = 90
#: At most this many host names / addresses from a CSR go into the certificate.
MAX_HOSTS = 16


class EnrolmentRefused(CaxtonError):
    """The CA holder refused to sign (or its answer did not check out)."""


def load_certificates(path: str | Path) -> list[x509.Certificate]:
    """Every PEM certificate in a file (a CA bundle holds several during a rotation)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CertificateError(f"cannot read certificate {path}: {exc.strerror}") from None
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CertificateError(f"{path} is not a PEM certificate") from None


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


# -------------------------------------------------------------------------
# The TLS material in a node's data directory
# -------------------------------------------------------------------------


@dataclass(frozen=True)
class DataDirPki:
    """``DATA_DIR/ca/`` (the cluster CA, on a CA holder) and ``DATA_DIR/certs/``."""

    data_dir: Path

    @property
    def ca_dir(self) -> Path:
        return self.data_dir / "ca"

    @property
    def certs_dir(self) -> Path:
        return self.data_dir / "certs"

    @property
    def files(self) -> TlsFiles:
        return TlsFiles.from_dir(self.certs_dir)

    def has_certificate(self) -> bool:
        files = self.files
        return all(p is not None and p.exists() for p in (files.ca_cert, files.node_cert))

    def holds_ca(self) -> bool:
        return (self.ca_dir / pki.CA_KEY).exists()

    def bootstrap(
        self, node_id: str, hosts: Sequence[str] = (), *, days: float = ENROLLED_CERT_DAYS
    ) -> bool:
        """Make the cluster CA (unless there is one) and this node's certificate (unless
        it has one); True when something was made."""
        made = False
        if not (self.ca_dir / pki.CA_CERT).exists():
            self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            pki.init_ca(self.ca_dir, name=f"Caxton cluster CA ({node_id})")
            self.ca_dir.chmod(0o700)
            made = True
        if not self.has_certificate():
            self.sign_own(node_id, hosts, days)
            made = True
        return made

    def sign_own(self, node_id: str, hosts: Sequence[str], days: float) -> None:
        """A new key and certificate for this node, signed by the CA it holds (at
        bootstrap, and for its renewals); its trusted CAs stay as they are."""
        ca_cert = pki.load_certificate(self.ca_dir / pki.CA_CERT)
        ca_key = pki.load_private_key(self.ca_dir / pki.CA_KEY)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = pki.sign_node_key(ca_cert, ca_key, key.public_key(), node_id, hosts, days=days)
        trusted = self.files.ca_cert
        assert trusted is not None
        bundle = (trusted if trusted.exists() else self.ca_dir / pki.CA_CERT).read_bytes()
        self.write(key, cert, bundle)

    def write(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, ca: bytes) -> None:
        """Store an enrolled or renewed pair; the key first, the certificate last (a
        reader that sees the new certificate finds its key)."""
        self.certs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        files = self.files
        assert files.node_cert is not None
        assert files.node_key is not None
        _replace(files.node_key, pki.key_pem(key), private=True)
        _replace(files.ca_cert, ca)
        _replace(files.node_cert, _pem(cert))


def _replace(path: Path, data: bytes, *, private: bool = False) -> None:
    import os

    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


# -------------------------------------------------------------------------
# The joining (or renewing) node
# -------------------------------------------------------------------------


def _csr(key: ec.EllipticCurvePrivateKey, node_id: str, hosts: Sequence[str]) -> bytes:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)])
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def join_request(
    token: JoinToken, node_id: str, hosts: Sequence[str] = ()
) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    """The request a joining node sends, and the private key it keeps."""
    pki.check_node_id(node_id)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = _csr(key, node_id, hosts)
    node = node_id.encode()
    token_id = token.token_id.encode()
    request = {
        "kind": "join",
        "token_id": token.token_id,
        "node_id": node_id,
        "csr": csr,
        "mac": token.mac(token_id, node, csr),
    }
    return msgpack.packb(request), key


def renew_request(
    files: TlsFiles, node_id: str, hosts: Sequence[str] = ()
) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    """The request of a node renewing its certificate with its current pair."""
    assert files.node_cert is not None
    assert files.node_key is not None
    current = pki.load_certificate(files.node_cert)
    current_key = pki.load_private_key(files.node_key)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = _csr(key, node_id, hosts)
    request = {
        "kind": "renew",
        "node_id": node_id,
        "csr": csr,
        "cert": _der(current),
        "signature": current_key.sign(csr, ec.ECDSA(hashes.SHA256())),
    }
    return msgpack.packb(request), key


def _answer(payload: bytes) -> dict[str, Any]:
    try:
        answer = msgpack.unpackb(payload)
    except Exception:
        raise EnrolmentRefused("the CA holder's answer is malformed") from None
    if not isinstance(answer, dict):
        raise EnrolmentRefused("the CA holder's answer is malformed")
    if not answer.get("ok"):
        raise EnrolmentRefused(str(answer.get("error") or "refused without a reason"))
    return answer


def accept_answer(
    payload: bytes,
    node_id: str,
    key: ec.EllipticCurvePrivateKey,
    *,
    token: JoinToken | None = None,
    trusted: Sequence[x509.Certificate] = (),
) -> tuple[x509.Certificate, bytes]:
    """Check the CA holder's answer; return the certificate and the CA bundle (PEM).

    A join answer is checked against the token (MAC and CA fingerprint); a renewal's
    against the CAs this node already trusts (``trusted``).
    """
    answer = _answer(payload)
    try:
        cert = x509.load_der_x509_certificate(bytes(answer["cert"]))
        bundle = bytes(answer["ca"])
        cas = x509.load_pem_x509_certificates(bundle)
    except (KeyError, TypeError, ValueError):
        raise EnrolmentRefused("the CA holder's answer carries no valid certificate") from None
    if token is not None:
        if token.mac(_der(cert), bundle) != bytes(answer.get("mac") or b""):
            raise EnrolmentRefused(
                "the answer is not proven with the token's secret: the node that answered "
                "does not hold this token (wrong address, or a man in the middle)"
            )
        anchors = [ca for ca in cas if ca_fingerprint(_der(ca)) == token.ca_fingerprint]
        if not anchors:
            raise EnrolmentRefused(
                "the CA holder's CA does not have the fingerprint in the token: the token is "
                "for another cluster"
            )
    else:
        known = {_der(ca) for ca in trusted}
        anchors = [ca for ca in cas if _der(ca) in known]
    issuers = [ca for ca in anchors if _issued_by(cert, ca)]
    if not issuers:
        raise EnrolmentRefused("the certificate received is not signed by the cluster CA")
    from caxton.security.identity import node_id_of

    if node_id_of(cert) != node_id:
        raise EnrolmentRefused(f"the certificate received names {node_id_of(cert)!r}")
    if cert.public_key() != key.public_key():
        raise EnrolmentRefused("the certificate received is not for this node's key")
    return cert, bundle


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


# -------------------------------------------------------------------------
# The CA holder
# -------------------------------------------------------------------------


class EnrolmentAuthority:
    """Answers enrolment and renewal requests with the CA in ``ca_dir``.

    ``is_member(node_id)`` says whether that node id is a live member already (a token
    must not let anyone take a running node's identity).
    """

    def __init__(
        self,
        ca_dir: str | Path,
        node_id: str,
        *,
        is_member: Callable[[str], bool] = lambda _node_id: False,
        trusted_bundle: str | Path | None = None,
        cert_days: float = ENROLLED_CERT_DAYS,
    ) -> None:
        self.ca_dir = Path(ca_dir)
        self.node_id = node_id
        self.is_member = is_member
        self.tokens = TokenStore(self.ca_dir)
        self.trusted_bundle = Path(trusted_bundle) if trusted_bundle else None
        self.cert_days = cert_days

    def answer(self, payload: bytes, remote: str) -> bytes:
        """The answer to one request (refusals too: the requester is told why)."""
        node_id = "?"
        try:
            request = msgpack.unpackb(payload)
            if not isinstance(request, dict):
                raise EnrolmentRefused("malformed enrolment request")
            node_id = str(request.get("node_id") or "?")
            answer = self._sign(request)
        except (CaxtonError, ValueError, TypeError, KeyError) as exc:
            reason = str(exc) if isinstance(exc, CaxtonError) else "malformed enrolment request"
            log.warning("refused enrolment of node %s from %s: %s", node_id, remote, reason)
            return bytes(msgpack.packb({"ok": False, "error": reason}))
        log.info("enrolled node %s from %s (%s)", node_id, remote, request["kind"])
        return bytes(msgpack.packb(answer))

    def _sign(self, request: dict[str, Any]) -> dict[str, Any]:
        kind = request.get("kind")
        node_id = pki.check_node_id(str(request["node_id"]))
        csr_der = bytes(request["csr"])
        csr = x509.load_der_x509_csr(csr_der)
        public_key = csr.public_key()
        if not csr.is_signature_valid or not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise EnrolmentRefused("the certificate request is not signed by an EC key")
        ca_cert = pki.load_certificate(self.ca_dir / pki.CA_CERT)
        ca_key = pki.load_private_key(self.ca_dir / pki.CA_KEY)
        secret: bytes | None = None
        if kind == "join":
            token_id = str(request["token_id"])
            if node_id == self.node_id or self.is_member(node_id):
                raise EnrolmentRefused(
                    f"node id {node_id!r} is a live member of the cluster already; give the "
                    f"new node another --node-id, or remove the old one first (caxton "
                    f"cluster remove --node {node_id})"
                )
            try:
                secret = self.tokens.redeem(
                    token_id,
                    node_id,
                    bytes(request["mac"]),
                    token_id.encode(),
                    node_id.encode(),
                    csr_der,
                )
            except JoinTokenError as exc:
                raise EnrolmentRefused(str(exc)) from None
        elif kind == "renew":
            self._check_renewal(request, node_id, csr_der)
        else:
            raise EnrolmentRefused(f"unknown enrolment request {kind!r}")
        cert = pki.sign_node_key(
            ca_cert, ca_key, public_key, node_id, _hosts(csr), days=self.cert_days
        )
        bundle = self._bundle(ca_cert)
        answer: dict[str, Any] = {"ok": True, "cert": _der(cert), "ca": bundle}
        if secret is not None:
            from caxton.security.join_tokens import token_mac

            answer["mac"] = token_mac(secret, _der(cert), bundle)
        return answer

    def _check_renewal(self, request: dict[str, Any], node_id: str, csr_der: bytes) -> None:
        from caxton.security.identity import node_id_of, verify_client_chain

        current = x509.load_der_x509_certificate(bytes(request["cert"]))
        verify_client_chain(current, [], self._trusted())
        if node_id_of(current) != node_id:
            raise EnrolmentRefused(
                f"a renewal for {node_id!r} must come with that node's current certificate"
            )
        public_key = current.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise EnrolmentRefused("the current certificate does not hold an EC key")
        try:
            public_key.verify(bytes(request["signature"]), csr_der, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise EnrolmentRefused("the renewal is not signed by the current key") from None

    def _trusted(self) -> list[x509.Certificate]:
        path = self.trusted_bundle or self.ca_dir / pki.CA_CERT
        return load_certificates(path)

    def _bundle(self, ca_cert: x509.Certificate) -> bytes:
        """What the new node trusts: this node's bundle (both CAs during a rotation)."""
        cas = self._trusted() if self.trusted_bundle else [ca_cert]
        if all(_der(ca) != _der(ca_cert) for ca in cas):
            cas.append(ca_cert)
        return b"".join(_pem(ca) for ca in cas)


def _hosts(csr: x509.CertificateSigningRequest) -> list[str]:
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    hosts = [str(v) for v in san.get_values_for_type(x509.IPAddress)]
    hosts += san.get_values_for_type(x509.DNSName)
    return hosts[:MAX_HOSTS]
