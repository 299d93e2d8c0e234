"""``caxton security api-key create|list|revoke`` and ``caxton security token create``.

API keys are managed on the node's host, in the node's state store (the file named by
``coordination.local_state_path``, default ``DATA_DIR/local.db``), whether the node runs
or not: having the data directory is what entitles an operator to mint the first admin
key. Tokens are signed with ``security.jwt_secret`` (HS256) by the ``caxton-auth-jwt``
plugin. Each action is written to the audit log. See docs/auth.md.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from caxton.cli.main import emit_json, output_options
from caxton.config import Config

__all__ = ["api_key_group", "token_group"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    from caxton.units import parse_duration

    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if seconds <= 0:
        raise click.BadParameter(f"must be a positive duration, got {value!r}")
    return seconds


def node_options(command: F) -> F:
    """``--config`` and ``--data-dir``: which node's store the command works on."""
    command = click.option(
        "--data-dir",
        type=click.Path(file_okay=False),
        default=None,
        help="The node's data directory (default: node.data_dir of the config).",
    )(command)
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        default=None,
        help="Config file (default: $CAXTON_CONFIG_PATH).",
    )(command)


def _config(ctx: click.Context, config_path: str | None, data_dir: str | None) -> Config:
    from caxton.cli.main import _shared_host
    from caxton.node import build_host_and_config

    overrides = {"node.data_dir": data_dir} if data_dir else {}
    _host, config = build_host_and_config(config_path, overrides=overrides, host=_shared_host(ctx))
    return config


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def audit_local(config: Config, action: str, target: str, details: str = "") -> None:
    """Record a command run on the node's host (no REST call) in its audit log."""
    from caxton.auth.audit import AuditLog

    settings = config["security.audit"]
    if not settings["enabled"]:
        return
    data_dir = Path(config["node"]["data_dir"]).expanduser()
    log = AuditLog(
        Path(settings["path"] or data_dir / "audit.log").expanduser(),
        max_bytes=settings["max_size"],
        backups=settings["backups"],
    )
    try:
        log.record(action, "success", identity=f"cli:{getpass.getuser()}", target=target,
                   source="local", details=details)  # fmt: skip
    finally:
        log.close()


def _store_path(config: Config) -> Path:
    data_dir = Path(config["node"]["data_dir"]).expanduser()
    return Path(config["coordination"]["local_state_path"] or data_dir / "local.db").expanduser()


async def _with_keys(config: Config, work: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
    from caxton.auth.keys import ApiKeyStore
    from caxton.store import Store

    store = Store(_store_path(config), journal_mode=config["coordination"]["journal_mode"])
    await store.open()
    try:
        keys = ApiKeyStore(store)
        await keys.setup()
        return await work(keys)
    finally:
        await store.close()


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(timestamp))


# -------------------------------------------------------------------------
# caxton security api-key
# -------------------------------------------------------------------------


@click.group("api-key")
def api_key_group() -> None:
    """API keys of a node (stored hashed in its state store)."""


@api_key_group.command("create")
@click.option("--role", required=True, help="admin, operator, developer, viewer or a custom role.")
@click.option(
    "--expires", callback=_duration, metavar="DURATION", help="Lifetime, e.g. 30d (default: none)."
)
@click.option("--name", default="", help="A label shown by 'list'.")
@node_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def create_key(
    ctx: click.Context,
    role: str,
    expires: float | None,
    name: str,
    config_path: str | None,
    data_dir: str | None,
    as_json: bool,
) -> None:
    """Create a key and print it once; only its hash is stored."""
    from caxton.auth.rbac import Roles

    config = _config(ctx, config_path, data_dir)
    Roles.from_config(config["security"]["roles"]).check_role(role)
    key, record = _run(_with_keys(config, lambda keys: keys.create(role, expires_in=expires,
                                                                   name=name)))  # fmt: skip
    audit_local(config, "api_key_create", f"key:{record.id}", f"role {role}")
    if as_json:
        click.echo(json.dumps({"key": key, **record.to_dict()}, indent=2))
        return
    click.echo(key)
    click.echo(
        f"API key {record.id}: role {role}, expires {_when(record.expires_at)}. "
        f"Store it now: it is not shown again.",
        err=True,
    )


@api_key_group.command("list")
@node_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def list_keys(
    ctx: click.Context, config_path: str | None, data_dir: str | None, as_json: bool
) -> None:
    """List the keys (never their secrets)."""
    from caxton.cli.main import render_table

    config = _config(ctx, config_path, data_dir)
    records = _run(_with_keys(config, lambda keys: keys.list()))
    now = time.time()
    if as_json:
        click.echo(json.dumps([r.to_dict(now) for r in records], indent=2))
        return
    click.echo(
        render_table(
            ("ID", "ROLE", "NAME", "CREATED", "EXPIRES", "STATUS"),
            [
                (
                    r.id,
                    r.role,
                    r.name or "-",
                    _when(r.created_at),
                    _when(r.expires_at),
                    r.status(now),
                )
                for r in records
            ],
        )
    )


@api_key_group.command("revoke")
@click.argument("key_id")
@node_options
@output_options
@click.pass_context
def revoke_key(
    ctx: click.Context, key_id: str, config_path: str | None, data_dir: str | None, as_json: bool
) -> None:
    """Revoke KEY_ID at once (running nodes refuse it from their next request)."""
    config = _config(ctx, config_path, data_dir)
    record = _run(_with_keys(config, lambda keys: keys.revoke(key_id)))
    audit_local(config, "api_key_revoke", f"key:{record.id}")
    if as_json:
        emit_json(record.to_dict())
        return
    click.echo(f"API key {record.id} revoked")


# -------------------------------------------------------------------------
# caxton security token
# -------------------------------------------------------------------------


@click.group("token")
def token_group() -> None:
    """JWT bearer tokens (the caxton-auth-jwt plugin)."""


@token_group.command("create")
@click.option("--role", "roles", required=True, multiple=True, help="Role (repeatable).")
@click.option(
    "--expires",
    callback=_duration,
    metavar="DURATION",
    help="Lifetime, e.g. 1h (default: security.jwt_expiry).",
)
@click.option("--subject", default=None, help="The token's sub (default: cli:USER).")
@node_options
@output_options
@click.pass_context
def create_token(
    ctx: click.Context,
    roles: tuple[str, ...],
    expires: float | None,
    subject: str | None,
    config_path: str | None,
    data_dir: str | None,
    as_json: bool,
) -> None:
    """Sign an HS256 token with security.jwt_secret and print it."""
    from caxton.auth.rbac import Roles
    from caxton.errors import PluginError

    config = _config(ctx, config_path, data_dir)
    table = Roles.from_config(config["security"]["roles"])
    for role in roles:
        table.check_role(role)
    try:
        from caxton_auth_jwt.tokens import create_token as sign
    except ImportError:
        raise PluginError("tokens need the jwt auth driver: pip install caxton-auth-jwt") from None
    subject = subject or f"cli:{getpass.getuser()}"
    token = sign(config, subject=subject, roles=list(roles), expires_in=expires)
    audit_local(config, "token_create", subject, f"roles {', '.join(roles)}")
    if as_json:
        emit_json({"token": token, "subject": subject, "roles": list(roles)})
        return
    click.echo(token)
