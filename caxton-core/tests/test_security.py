"""Cluster PKI (caxton.security) and the ``caxton security`` commands."""

from __future__ import annotations

import datetime
import json
import ssl
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography import x509

from caxton.cli.security import security
from caxton.errors import CertificateError, PeerRejected
from caxton.security import (
    TlsFiles,
    cert_status,
    client_context,
    init_ca,
    issue_node_cert,
    node_id_of,
    server_context,
    verify_client_chain,
    verify_peer_identity,
)

UTC = datetime.timezone.utc


def invoke(*args: str) -> Result:
    assert args[0] == "security"
    return CliRunner().invoke(security, list(args[1:]), catch_exceptions=False, env={})


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki") / "ca"
    init_ca(directory)
    return directory


def test_init_ca_writes_a_ca_and_a_private_key(tmp_path: Path) -> None:
    ca = init_ca(tmp_path / "ca", days=30)
    assert ca.cert_path.name == "ca.crt"
    assert stat.S_IMODE(ca.key_path.stat().st_mode) == 0o600
    assert cert_status([ca.cert_path])[0].node_id == "(ca)"


def test_init_ca_refuses_to_overwrite(ca_dir: Path) -> None:
    with pytest.raises(CertificateError, match="already exists"):
        init_ca(ca_dir)


def test_node_certificate_names_the_node_in_its_san(ca_dir: Path, tmp_path: Path) -> None:
    issued = issue_node_cert(ca_dir, "node-7", tmp_path, hosts=["10.0.0.7", "node-7.lan"])
    assert node_id_of(issued.certificate) == "node-7"
    assert verify_peer_identity(issued.certificate, "node-7") == "node-7"
    assert (tmp_path / "ca.crt").read_bytes() == (ca_dir / "ca.crt").read_bytes()
    verify_client_chain(issued.certificate, [], [init_ca_cert(ca_dir)])


def init_ca_cert(ca_dir: Path) -> object:
    from caxton.security import load_certificate

    return load_certificate(ca_dir / "ca.crt")


def test_another_nodes_certificate_does_not_pass(ca_dir: Path, tmp_path: Path) -> None:
    issued = issue_node_cert(ca_dir, "node-b", tmp_path)
    with pytest.raises(PeerRejected, match="'node-a' but its certificate is for 'node-b'"):
        verify_peer_identity(issued.certificate, "node-a")
    with pytest.raises(PeerRejected, match="no certificate"):
        verify_peer_identity(None, "node-a")


def test_chain_verification_refuses_foreign_and_expired(ca_dir: Path, tmp_path: Path) -> None:
    other = init_ca(tmp_path / "other")
    foreign = issue_node_cert(other.cert_path.parent, "node-a", tmp_path / "f")
    start = datetime.datetime.now(UTC) - datetime.timedelta(days=100)
    expired = issue_node_cert(ca_dir, "node-a", tmp_path / "e", days=10, valid_from=start)
    trusted = [init_ca_cert(ca_dir)]
    for certificate in (foreign.certificate, expired.certificate, None):
        with pytest.raises(PeerRejected):
            verify_client_chain(certificate, [], trusted)  # type: ignore[arg-type]
    assert cert_status([expired.cert_path])[0].status == "EXPIRED"


def test_invalid_node_ids_are_refused(ca_dir: Path, tmp_path: Path) -> None:
    for bad in ("", "has space", "-dash", "x" * 64, "a/b"):
        with pytest.raises(CertificateError, match="invalid node id"):
            issue_node_cert(ca_dir, bad, tmp_path)


def test_ssl_contexts_are_tls13_and_require_client_certificates(
    ca_dir: Path, tmp_path: Path
) -> None:
    issue_node_cert(ca_dir, "node-s", tmp_path)
    files = TlsFiles.from_dir(tmp_path)
    server = server_context(files)
    client = client_context(files)
    for context in (server, client):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_3
        assert context.verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(CertificateError, match="cannot load"):
        server_context(TlsFiles(tmp_path / "missing.crt", files.node_cert, files.node_key))


def test_cert_status_warns_thirty_days_ahead(ca_dir: Path, tmp_path: Path) -> None:
    issue_node_cert(ca_dir, "node-w", tmp_path / "w", days=20)
    issue_node_cert(ca_dir, "node-o", tmp_path / "o", days=200)
    rows = {row.node_id: row for row in cert_status([tmp_path])}
    assert rows["node-w"].status == "WARNING"
    assert rows["node-o"].status == "OK"
    assert list(rows).count("(ca)") == 1  # the two copies of ca.crt are one certificate


# -------------------------------------------------------------------------
# caxton security
# -------------------------------------------------------------------------


def test_cli_init_issue_and_status(tmp_path: Path) -> None:
    result = invoke("security", "init-ca", "--output", str(tmp_path / "ca"))
    assert result.exit_code == 0, result.output
    result = invoke(
        "security",
        "issue-cert",
        "--ca",
        str(tmp_path / "ca"),
        "--node-id",
        "node-1",
        "--output",
        str(tmp_path / "n1"),
        "--days",
        "25",
        "--host",
        "127.0.0.1",
    )
    assert result.exit_code == 0, result.output
    assert "Node certificate for node-1" in result.output
    result = invoke("security", "cert-status", "--dir", str(tmp_path / "n1"))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["NODE-ID", "EXPIRES-IN", "STATUS"]
    assert lines[2].split() == ["node-1", "24", "days", "WARNING"]
    data = json.loads(invoke("security", "cert-status", "--dir", str(tmp_path), "--json").output)
    assert {row["node_id"] for row in data} == {"(ca)", "node-1"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("issue-cert", "--ca", "{tmp}/nope", "--node-id", "n", "--output", "{tmp}/o"),
            "cannot read certificate",
        ),
        (
            ("issue-cert", "--ca", "{tmp}/ca", "--node-id", "bad id", "--output", "{tmp}/o"),
            "invalid node id 'bad id'",
        ),
        (("cert-status", "--dir", "{tmp}/missing"), "no such file or directory"),
        (("cert-status",), "no certificates configured in security.cluster.mtls"),
    ],
)
def test_cli_errors_are_one_line(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    init_ca(tmp_path / "ca")
    result = invoke("security", *(a.format(tmp=tmp_path) for a in args))
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].startswith("Error: ")
    assert message in result.output


def test_rotate_certs_keeps_identity_and_hosts(ca_dir: Path, tmp_path: Path) -> None:
    from caxton.security.pki import rotate_node_certs

    old = issue_node_cert(ca_dir, "node-r", tmp_path / "r", days=5, hosts=["10.0.0.9", "r.lan"])
    (new,) = rotate_node_certs(ca_dir / "ca.crt", ca_dir / "ca.key", [tmp_path], days=90)
    assert new.node_id == "node-r"
    assert new.certificate.serial_number != old.certificate.serial_number
    assert new.certificate.public_key() != old.certificate.public_key()
    san = new.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert (
        san.value
        == old.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    )
    kept = x509.load_pem_x509_certificate((tmp_path / "r" / "node.crt.old").read_bytes())
    assert kept == old.certificate
    assert cert_status([new.cert_path])[0].status == "OK"


def test_cli_rotate_certs(ca_dir: Path, tmp_path: Path) -> None:
    issue_node_cert(ca_dir, "node-q", tmp_path / "q", days=3)
    result = invoke(
        "security",
        "rotate-certs",
        "--ca-cert",
        str(ca_dir / "ca.crt"),
        "--ca-key",
        str(ca_dir / "ca.key"),
        "--dir",
        str(tmp_path),
    )
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1].split()[0] == "node-q"
    result = invoke(
        "security",
        "rotate-certs",
        "--ca-cert",
        str(ca_dir / "ca.crt"),
        "--ca-key",
        str(ca_dir / "ca.key"),
        "--dir",
        str(tmp_path / "empty"),
    )
    assert result.exit_code != 0
    assert "no node certificate (node.crt) found" in result.output
