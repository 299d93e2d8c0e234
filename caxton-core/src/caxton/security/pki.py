"""The cluster's certificate authority and node certificates.

A cluster has one CA (``ca.crt`` + ``ca.key``, made by :func:`init_ca`). Every node gets
a certificate signed by it (``node.crt`` + ``node.key``, made by :func:`issue_node_cert`)
whose subject alternative names carry the node id twice: as the URI
``caxton://node/<id>`` (what peers check, see :mod:`caxton.security.identity`) and as a
DNS name, next to any ``hosts`` (DNS names or IP addresses) the node is reached at.
Keys are ECDSA P-256; private keys are written with mode 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from caxton.errors import CertificateError

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
NODE_CERT = "node.crt"
NODE_KEY = "node.key"
#: A node's identity inside its certificate: ``caxton://node/<node id>``.
NODE_URI_PREFIX = "caxton://node/"
#: Certificates expiring sooner than this are reported as WARNING.
WARNING_WINDOW = datetime.timedelta(days=30)

_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def check_node_id(node_id: str) -> str:
    """Node ids go into DNS names and URIs: letters, digits, '.', '_' and '-' only."""
    if not _NODE_ID.match(node_id):
        raise CertificateError(
            f"invalid node id {node_id!r}: use 1-63 letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit"
        )
    return node_id


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _write_pair(
    cert_path: Path, cert: x509.Certificate, key_path: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    try:
        _write_private(key_path, key_pem(key))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    except OSError as exc:
        raise CertificateError(f"cannot write {exc.filename}: {exc.strerror}") from None


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _prepare_dir(output_dir: str | Path, names: Iterable[str], force: bool) -> Path:
    directory = Path(output_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CertificateError(f"cannot create {directory}: {exc.strerror}") from None
    existing = [name for name in names if (directory / name).exists()]
    if existing and not force:
        raise CertificateError(
            f"{directory / existing[0]} already exists; refusing to overwrite it "
            f"(remove it first, or choose another --output)"
        )
    return directory


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CertificateError(f"cannot read {what} {path}: {exc.strerror}") from None


def load_certificate(path: str | Path) -> x509.Certificate:
    """Read one PEM certificate, with a clear error when it is missing or malformed."""
    data = _read(path, "certificate")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise CertificateError(f"{path} is not a PEM certificate") from None


def load_private_key(path: str | Path) -> ec.EllipticCurvePrivateKey:
    data = _read(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise CertificateError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{path}: expected an EC private key made by caxton security")
    return key


def _self_signed_builder(
    name: str, days: int
) -> tuple[ec.EllipticCurvePrivateKey, x509.CertificateBuilder]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
    )
    return key, builder


@dataclass(frozen=True)
class CertificateAuthority:
    cert_path: Path
    key_path: Path
    certificate: x509.Certificate


def init_ca(
    output_dir: str | Path,
    *,
    name: str = "Caxton cluster CA",
    days: int = 3650,
    force: bool = False,
) -> CertificateAuthority:
    """Create a new cluster CA in ``output_dir`` (``ca.crt``, ``ca.key``)."""
    if days < 1:
        raise CertificateError(f"--days must be at least 1, got {days}")
    directory = _prepare_dir(output_dir, (CA_CERT, CA_KEY), force)
    key, builder = _self_signed_builder(name, days)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    _write_pair(cert_path, cert, key_path, key)
    return CertificateAuthority(cert_path, key_path, cert)


def ephemeral_certificate(
    name: str = "caxton-plaintext",
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A throwaway self-signed pair, for TLS stacks that need one even in plaintext mode
    (QUIC always runs TLS). It authenticates nothing."""
    key, builder = _self_signed_builder(name, 30)
    return builder.sign(key, hashes.SHA256()), key


@dataclass(frozen=True)
class NodeCertificate:
    node_id: str
    cert_path: Path
    key_path: Path
    ca_path: Path
    certificate: x509.Certificate


def _general_names(node_id: str, hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(NODE_URI_PREFIX + node_id),
        x509.DNSName(node_id),
    ]
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    unique: list[x509.GeneralName] = []
    for name in names:
        if name not in unique:
            unique.append(name)
    return unique


def _sign_node_cert(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    node_id: str,
    hosts: Sequence[str],
    days: int,
    valid_from: datetime.datetime | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = sign_node_key(
        ca_cert, ca_key, key.public_key(), node_id, hosts, days=days, valid_from=valid_from
    )
    return cert, key


def sign_node_key(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    public_key: ec.EllipticCurvePublicKey,
    node_id: str,
    hosts: Sequence[str] = (),
    *,
    days: float = 365,
    valid_from: datetime.datetime | None = None,
) -> x509.Certificate:
    """A node certificate for ``public_key`` (a node's own key, from its CSR), signed by
    the CA: the same profile as :func:`issue_node_cert`. It is valid for ``days`` from
    ``valid_from``, or from now (and, for clocks a little behind, from 5 minutes ago)."""
    now = _now()
    start = valid_from or (now - datetime.timedelta(minutes=5))
    end = (valid_from or now) + datetime.timedelta(days=days)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(_general_names(node_id, hosts)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert


def issue_node_cert(
    ca_dir: str | Path,
    node_id: str,
    output_dir: str | Path,
    *,
    days: int = 365,
    hosts: Sequence[str] = (),
    valid_from: datetime.datetime | None = None,
    force: bool = False,
) -> NodeCertificate:
    """Sign a certificate for ``node_id`` with the CA in ``ca_dir``.

    Writes ``node.crt``, ``node.key`` and a copy of ``ca.crt`` (when ``output_dir`` is
    not the CA directory) so that one directory holds what a node's mTLS config names.
    ``valid_from`` backdates the certificate (tests use it to make an expired one).
    """
    check_node_id(node_id)
    if days < 1:
        raise CertificateError(f"--days must be at least 1, got {days}")
    ca_path = Path(ca_dir)
    ca_cert = load_certificate(ca_path / CA_CERT)
    ca_key = load_private_key(ca_path / CA_KEY)
    directory = _prepare_dir(output_dir, (NODE_CERT, NODE_KEY), force)
    cert, key = _sign_node_cert(ca_cert, ca_key, node_id, hosts, days, valid_from)
    cert_path, key_path = directory / NODE_CERT, directory / NODE_KEY
    _write_pair(cert_path, cert, key_path, key)
    copied_ca = directory / CA_CERT
    if copied_ca.resolve() != (ca_path / CA_CERT).resolve():
        try:
            shutil.copyfile(ca_path / CA_CERT, copied_ca)
        except OSError as exc:
            raise CertificateError(f"cannot write {copied_ca}: {exc.strerror}") from None
    return NodeCertificate(node_id, cert_path, key_path, copied_ca, cert)


def _hosts_of(cert: x509.Certificate, node_id: str) -> list[str]:
    """The ``--host`` values a node certificate was issued with."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    hosts: list[str] = []
    for name in san:  # in issue order
        if isinstance(name, x509.DNSName) and name.value != node_id:
            hosts.append(name.value)
        elif isinstance(name, x509.IPAddress):
            hosts.append(str(name.value))
    return hosts


def rotate_node_certs(
    ca_cert: str | Path,
    ca_key: str | Path,
    paths: Sequence[str | Path],
    *,
    days: int = 365,
) -> list[NodeCertificate]:
    """Re-issue node certificates in place: same node id and hosts, new key and dates.

    ``paths`` are node certificate files or directories holding ``node.crt``; each one's
    key is the ``.key`` file beside it. The previous pair is kept as ``*.old``. Nodes
    pick the new pair up when they restart.
    """
    from caxton.security.identity import node_id_of

    if days < 1:
        raise CertificateError(f"--days must be at least 1, got {days}")
    authority = load_certificate(ca_cert)
    authority_key = load_private_key(ca_key)
    files: list[Path] = []
    for item in paths:
        path = Path(item)
        found = sorted(path.rglob(NODE_CERT)) if path.is_dir() else [path]
        if not found or not found[0].exists():
            raise CertificateError(f"{path}: no node certificate ({NODE_CERT}) found")
        files.extend(found)
    rotated: list[NodeCertificate] = []
    for cert_path in files:
        old = load_certificate(cert_path)
        node_id = node_id_of(old)
        if node_id is None:
            raise CertificateError(f"{cert_path} is not a Caxton node certificate")
        key_path = cert_path.with_suffix(".key")
        if not key_path.exists():
            raise CertificateError(f"{cert_path}: its key {key_path} is missing")
        cert, key = _sign_node_cert(
            authority, authority_key, node_id, _hosts_of(old, node_id), days
        )
        for path in (cert_path, key_path):
            try:
                shutil.copy2(path, path.with_name(path.name + ".old"))
            except OSError as exc:
                raise CertificateError(f"cannot keep a copy of {path}: {exc.strerror}") from None
        _write_pair(cert_path, cert, key_path, key)
        rotated.append(NodeCertificate(node_id, cert_path, key_path, Path(ca_cert), cert))
    return rotated


# -------------------------------------------------------------------------
# Status
# -------------------------------------------------------------------------


@dataclass(frozen=True)
class CertStatus:
    """One row of ``caxton security cert-status``."""

    path: Path
    node_id: str
    is_ca: bool
    not_after: datetime.datetime
    expires_in: datetime.timedelta
    status: str

    def to_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "node_id": self.node_id,
            "ca": self.is_ca,
            "not_after": self.not_after.isoformat(),
            "expires_in_days": self.expires_in.days,
            "status": self.status,
        }


def _status_of(cert: x509.Certificate, now: datetime.datetime) -> str:
    if now < cert.not_valid_before_utc:
        return "NOT-YET-VALID"
    if now >= cert.not_valid_after_utc:
        return "EXPIRED"
    if cert.not_valid_after_utc - now < WARNING_WINDOW:
        return "WARNING"
    return "OK"


def cert_status(
    paths: Iterable[str | Path], *, now: datetime.datetime | None = None
) -> list[CertStatus]:
    """Expiry status of certificates: files, or directories searched for ``*.crt``.

    Node certificates report their node id (from the ``caxton://node/`` SAN); the CA
    reports ``(ca)``. Copies of the same certificate are listed once.
    """
    from caxton.security.identity import node_id_of

    now = now or _now()
    files: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            files.extend(sorted(path.rglob("*.crt")) + sorted(path.rglob("*.pem")))
        elif path.exists():
            files.append(path)
        else:
            raise CertificateError(f"{path}: no such file or directory")
    rows: list[CertStatus] = []
    seen: set[bytes] = set()
    for file in files:
        cert = load_certificate(file)
        fingerprint = cert.fingerprint(hashes.SHA256())
        if fingerprint in seen:
            continue
        seen.add(fingerprint)
        is_ca = _is_ca(cert)
        node_id = "(ca)" if is_ca else (node_id_of(cert) or f"({file.name})")
        rows.append(
            CertStatus(
                path=file,
                node_id=node_id,
                is_ca=is_ca,
                not_after=cert.not_valid_after_utc,
                expires_in=cert.not_valid_after_utc - now,
                status=_status_of(cert, now),
            )
        )
    return rows


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False
