"""``caxton cluster token create|list|revoke``: join tokens of the cluster CA.

They work on the CA holder's files (``DATA_DIR/ca``, made at ``--bootstrap``), on its
host, whether the node runs or not, like ``caxton security api-key``: holding the data
directory is what entitles an operator to admit nodes. See docs/design/0007.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from caxton.cli.main import emit_json, output_options, render_table
from caxton.cli.security_auth import _config, _duration, audit_local, node_options

if TYPE_CHECKING:
    from caxton.config import Config

__all__ = ["token_group"]


def _ca_dir(
    ctx: click.Context, ca: str | None, config_path: str | None, data_dir: str | None
) -> tuple[Path, Config | None]:
    """The CA directory, and the node's config when it came from one (for the audit)."""
    if ca:
        return Path(ca), None
    from caxton.security.enrolment import DataDirPki

    config = _config(ctx, config_path, data_dir)
    return DataDirPki(Path(config["node"]["data_dir"]).expanduser()).ca_dir, config


def _ca_option(command: Any) -> Any:
    return click.option(
        "--ca",
        type=click.Path(file_okay=False),
        default=None,
        help="The CA directory (default: DATA_DIR/ca of the node).",
    )(command)


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(timestamp))


@click.group("token")
def token_group() -> None:
    """Join tokens: let a new node get its certificate (server start --token)."""


@token_group.command("create")
@click.option(
    "--ttl",
    callback=_duration,
    default="1h",
    show_default=True,
    metavar="DURATION",
    help="How long the token is valid, e.g. 15m, 24h.",
)
@click.option(
    "--uses",
    type=click.IntRange(1, 10_000),
    default=1,
    show_default=True,
    help="How many nodes may join with it.",
)
@click.option("--description", default="", help="A label shown by 'list'.")
@_ca_option
@node_options
@output_options
@click.pass_context
def create_token(
    ctx: click.Context,
    ttl: float,
    uses: int,
    description: str,
    ca: str | None,
    config_path: str | None,
    data_dir: str | None,
    as_json: bool,
) -> None:
    """Create a join token and print it once (keep it secret until it is used)."""
    from caxton.security.join_tokens import TokenStore

    ca_dir, config = _ca_dir(ctx, ca, config_path, data_dir)
    token = TokenStore(ca_dir).create(ttl, uses=uses, description=description)
    if config is not None:
        audit_local(config, "join_token_create", f"join-token:{token.token_id}",
                    f"uses {uses}, ttl {ttl:g}s")  # fmt: skip
    if as_json:
        emit_json({"token": str(token), "id": token.token_id, "uses": uses, "ttl_seconds": ttl})
        return
    click.echo(str(token))
    click.echo(
        f"Join token {token.token_id}: {uses} node{'s' if uses > 1 else ''}, valid "
        f"{ttl:g}s. On the new node: caxton server start --join HOST:PORT --token TOKEN "
        f"(or CAXTON_JOIN_TOKEN=TOKEN).",
        err=True,
    )


@token_group.command("list")
@_ca_option
@node_options
@output_options
@click.pass_context
def list_tokens(
    ctx: click.Context, ca: str | None, config_path: str | None, data_dir: str | None,
    as_json: bool,
) -> None:  # fmt: skip
    """List the join tokens (never their secrets)."""
    from caxton.security.join_tokens import TokenStore

    ca_dir, _ = _ca_dir(ctx, ca, config_path, data_dir)
    now = time.time()
    records = TokenStore(ca_dir).list()
    if as_json:
        emit_json([r.to_dict(now) for r in records])
        return
    click.echo(
        render_table(
            ("ID", "STATUS", "USED", "EXPIRES", "NODES", "DESCRIPTION"),
            [
                (
                    r.token_id,
                    r.status(now),
                    f"{r.used}/{r.uses}",
                    _when(r.expires_at),
                    ",".join(r.nodes) or "-",
                    r.description or "-",
                )
                for r in records
            ],
        )
    )


@token_group.command("revoke")
@click.argument("token_id")
@_ca_option
@node_options
@output_options
@click.pass_context
def revoke_token(
    ctx: click.Context, token_id: str, ca: str | None, config_path: str | None,
    data_dir: str | None, as_json: bool,
) -> None:  # fmt: skip
    """Revoke TOKEN_ID at once (nodes already enrolled keep their certificates)."""
    from caxton.security.join_tokens import TokenStore

    ca_dir, config = _ca_dir(ctx, ca, config_path, data_dir)
    record = TokenStore(ca_dir).revoke(token_id)
    if config is not None:
        audit_local(config, "join_token_revoke", f"join-token:{record.token_id}")
    if as_json:
        emit_json(record.to_dict())
        return
    click.echo(f"Join token {record.token_id} revoked")
