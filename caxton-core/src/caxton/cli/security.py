"""``caxton security``: the cluster CA and node certificates for mutual TLS."""

from __future__ import annotations

import json
from pathlib import Path

import click

from caxton.cli.main import emit_json, output_options, render_table
from caxton.errors import CaxtonError


def _fail(exc: CaxtonError) -> click.ClickException:
    return click.ClickException(str(exc))


@click.group("security")
def security() -> None:
    """Certificates for mutual TLS between nodes."""


@security.command("init-ca")
@click.option(
    "--output",
    "output",
    required=True,
    type=click.Path(file_okay=False),
    help="Directory for ca.crt and ca.key (created if missing).",
)
@click.option("--days", default=3650, show_default=True, help="Validity of the CA.")
@click.option("--force", is_flag=True, help="Overwrite an existing CA in DIR.")
@output_options
def init_ca_command(output: str, days: int, force: bool, as_json: bool) -> None:
    """Create the cluster certificate authority."""
    from caxton.security.pki import init_ca

    try:
        ca = init_ca(output, days=days, force=force)
    except CaxtonError as exc:
        raise _fail(exc) from None
    if as_json:
        emit_json({"ca_cert": str(ca.cert_path), "ca_key": str(ca.key_path)})
        return
    click.echo(f"CA certificate: {ca.cert_path}")
    click.echo(f"CA private key: {ca.key_path} (keep it off the nodes)")


@security.command("issue-cert")
@click.option(
    "--ca",
    "ca_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Directory holding ca.crt and ca.key.",
)
@click.option("--node-id", required=True, help="The node's id; written into the SAN.")
@click.option(
    "--output",
    "output",
    required=True,
    type=click.Path(file_okay=False),
    help="Directory for node.crt, node.key and a copy of ca.crt.",
)
@click.option("--days", default=365, show_default=True, help="Validity of the certificate.")
@click.option(
    "--host",
    "hosts",
    multiple=True,
    metavar="H",
    help="Extra DNS name or IP address for the SAN (repeatable).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing node.crt/node.key.")
@output_options
def issue_cert_command(
    ca_dir: str,
    node_id: str,
    output: str,
    days: int,
    hosts: tuple[str, ...],
    force: bool,
    as_json: bool,
) -> None:
    """Issue a node certificate signed by the cluster CA."""
    from caxton.security.pki import issue_node_cert

    try:
        issued = issue_node_cert(ca_dir, node_id, output, days=days, hosts=hosts, force=force)
    except CaxtonError as exc:
        raise _fail(exc) from None
    expires = issued.certificate.not_valid_after_utc.strftime("%Y-%m-%d")
    if as_json:
        emit_json(
            {
                "node_id": node_id,
                "node_cert": str(issued.cert_path),
                "node_key": str(issued.key_path),
                "ca_cert": str(issued.ca_path),
                "expires": expires,
            }
        )
        return
    click.echo(f"Node certificate for {node_id}: {issued.cert_path} (expires {expires})")
    click.echo(f"Node private key: {issued.key_path}")


@security.command("rotate-certs")
@click.option("--ca-cert", required=True, type=click.Path(dir_okay=False), help="CA certificate.")
@click.option("--ca-key", required=True, type=click.Path(dir_okay=False), help="CA private key.")
@click.option(
    "--dir",
    "directories",
    multiple=True,
    type=click.Path(),
    help="Directory holding node.crt (searched recursively) or a node certificate; "
    "repeatable. Default: security.cluster.mtls.node_cert.",
)
@click.option("--days", default=365, show_default=True, help="Validity of the new certificates.")
@output_options
def rotate_certs_command(
    ca_cert: str, ca_key: str, directories: tuple[str, ...], days: int, as_json: bool
) -> None:
    """Re-issue node certificates in place (same node id and hosts); running nodes reload
    them."""
    from caxton.security.pki import rotate_node_certs

    try:
        paths = [Path(d) for d in directories] if directories else _default_paths("node_cert")
        rotated = rotate_node_certs(ca_cert, ca_key, paths, days=days)
    except CaxtonError as exc:
        raise _fail(exc) from None
    if as_json:
        emit_json(
            [
                {
                    "node_id": r.node_id,
                    "expires": r.certificate.not_valid_after_utc.strftime("%Y-%m-%d"),
                    "node_cert": str(r.cert_path),
                }
                for r in rotated
            ]
        )
        return
    click.echo(
        render_table(
            ("NODE-ID", "EXPIRES", "CERTIFICATE"),
            [
                (r.node_id, r.certificate.not_valid_after_utc.strftime("%Y-%m-%d"), r.cert_path)
                for r in rotated
            ],
        )
    )
    click.echo(
        "Previous pairs kept as *.old; running nodes reload their files within seconds "
        "(or on SIGHUP): new connections use the new certificates."
    )


def _default_paths(*keys: str) -> list[Path]:
    """The certificates the current config's ``[security.cluster.mtls]`` names."""
    from caxton.config import load_config

    mtls = load_config()["security.cluster.mtls"]
    paths = [Path(mtls[key]) for key in keys or ("ca_cert", "node_cert") if mtls.get(key)]
    if not paths:
        raise click.ClickException(
            "no certificates configured in security.cluster.mtls: pass --dir DIR"
        )
    return paths


def _expires_in(days: int) -> str:
    if days < 0:
        return f"{-days} days ago" if days < -1 else "1 day ago"
    return "1 day" if days == 1 else f"{days} days"


@security.command("cert-status")
@click.option(
    "--dir",
    "directories",
    multiple=True,
    type=click.Path(),
    help="Directory (searched for *.crt) or certificate file; repeatable. "
    "Default: the files named in security.cluster.mtls.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def cert_status_command(directories: tuple[str, ...], as_json: bool) -> None:
    """Show when each certificate expires (WARNING under 30 days)."""
    from caxton.cli.main import render_table
    from caxton.security.pki import cert_status

    try:
        paths = [Path(d) for d in directories] if directories else _default_paths()
        rows = cert_status(paths)
    except CaxtonError as exc:
        raise _fail(exc) from None
    if as_json:
        click.echo(json.dumps([row.to_dict() for row in rows], indent=2))
        return
    if not rows:
        raise click.ClickException(f"no certificates found in {', '.join(str(p) for p in paths)}")
    click.echo(
        render_table(
            ("NODE-ID", "EXPIRES-IN", "STATUS"),
            [(row.node_id, _expires_in(row.expires_in.days), row.status) for row in rows],
        )
    )


def _add_auth_commands() -> None:
    from caxton.cli.cluster import verify_auth
    from caxton.cli.security_auth import api_key_group, token_group

    security.add_command(api_key_group)
    security.add_command(token_group)
    # The security view of the cluster: whose certificates agree, who refused whom.
    security.add_command(verify_auth, "verify-auth")


_add_auth_commands()
