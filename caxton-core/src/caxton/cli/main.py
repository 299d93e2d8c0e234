"""The ``caxton`` command.

Every failure is one line on stderr and a non-zero exit: :class:`CaxtonCLI` turns any
:class:`caxton.errors.CaxtonError` into a :class:`click.ClickException`. Plugins add
commands through the ``caxton_cli_commands`` hook.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import itertools
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click
import yaml

from caxton import __version__
from caxton.errors import CaxtonError
from caxton.plugins import PluginHost, PluginInfo

F = TypeVar("F", bound=Callable[..., Any])

#: Command groups core ships in their own modules: (module, attribute).
CORE_COMMANDS: tuple[tuple[str, str], ...] = (
    ("caxton.cli.security", "security"),
    ("caxton.cli.template", "plugin"),
    ("caxton.cli.client", "COMMANDS"),
    ("caxton.cli.cluster", "cluster"),
    ("caxton.cli.backup", "COMMANDS"),
    ("caxton.cli.emergency", "COMMANDS"),
    ("caxton.cli.logs", "COMMANDS"),
    ("caxton.cli.agent_state", "COMMANDS"),  # adds 'agent state' to the agent group
    ("caxton.cli.diagnostics", "COMMANDS"),
)


class CaxtonCLI(click.Group):
    """A click group that reports Caxton errors as one line, without a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CaxtonError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            raise click.ClickException(f"{exc.strerror or exc}") from None


#: ``click.Context.meta`` keys of the output options (:func:`output_options`).
FORMAT_KEY = "caxton.format"
NO_HEADERS_KEY = "caxton.no_headers"
FORMATS = ("table", "json", "yaml")


def _meta(key: str, default: Any) -> Any:
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get(key, default) if ctx is not None else default


def output_options(command: F) -> F:
    """``--json``, ``--format table|json|yaml`` and ``--no-headers``; the command receives
    ``as_json`` (true for json and yaml: :func:`emit_json` writes the chosen one)."""

    def remember(key: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
        def store(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
            if value:
                ctx.meta[key] = value
            return value

        return store

    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output (JSON).")
    @click.option(
        "--format",
        "output_format",
        type=click.Choice(FORMATS),
        callback=remember(FORMAT_KEY),
        expose_value=True,
        help="Output format (default: table; --json is --format json).",
    )
    @click.option(
        "--no-headers",
        is_flag=True,
        callback=remember(NO_HEADERS_KEY),
        help="Tables without their header line.",
    )
    @functools.wraps(command)
    def wrapper(
        *args: Any, as_json: bool, output_format: str | None, no_headers: bool, **kwargs: Any
    ) -> Any:
        if as_json and output_format not in (None, "json"):
            raise click.UsageError(f"--json and --format {output_format} contradict each other")
        return command(*args, as_json=as_json or output_format in ("json", "yaml"), **kwargs)

    return wrapper  # type: ignore[return-value]


def emit_json(data: Any) -> None:
    """``data`` as JSON, or as YAML under ``--format yaml``."""
    if _meta(FORMAT_KEY, "json") == "yaml":
        click.echo(yaml.safe_dump(json.loads(json.dumps(data, default=str)), sort_keys=False))
        return
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def render_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Plain column-aligned table, as the product documents print them (no header line
    under ``--no-headers``)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "    ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in cells
    ]
    if _meta(NO_HEADERS_KEY, False):
        lines = lines[1:]
    return "\n".join(lines)


@click.group(
    cls=CaxtonCLI,
    invoke_without_command=True,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="caxton")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Config file for every command (as $CAXTON_CONFIG_PATH). Alone, "
    "'caxton --config FILE' starts a node with it, as 'server start' does.",
)
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Caxton: a secure WebAssembly runtime for multi-agent systems."""
    if config_path is not None:
        # The commands' own --config wins; otherwise they read $CAXTON_CONFIG_PATH.
        os.environ["CAXTON_CONFIG_PATH"] = os.path.abspath(config_path)
    if ctx.invoked_subcommand is None:
        ctx.invoke(server_start, config_path=config_path)


# -------------------------------------------------------------------------
# caxton plugins
# -------------------------------------------------------------------------


@cli.command("plugins")
@output_options
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None)
@click.option(
    "--plugin",
    "plugin_options",
    multiple=True,
    metavar="SPEC",
    help="As for 'server start': kind=name, pkg.module or no:NAME.",
)
@click.pass_context
def plugins_command(
    ctx: click.Context, as_json: bool, config_path: str | None, plugin_options: tuple[str, ...]
) -> None:
    """List every discovered plugin: kind, name, distribution, version, hooks, state."""
    from caxton.node import build_host_and_config

    host, config = build_host_and_config(
        config_path, plugin_options=plugin_options, host=_shared_host(ctx)
    )
    selection = {
        kind: config["plugins"][kind]
        for kind in ("sandbox", "transport", "membership", "placement", "partition_policy", "auth")
    }
    rows = host.describe(selection)
    if as_json:
        emit_json([row.to_dict() for row in rows])
        return

    def state(row: PluginInfo) -> str:
        if row.broken:
            return "broken: " + row.broken
        if row.blocked:
            return "blocked"
        return "selected" if row.selected else "available"

    click.echo(
        render_table(
            ("KIND", "NAME", "DISTRIBUTION", "VERSION", "HOOKS", "STATE"),
            [
                (
                    r.kind,
                    r.name,
                    r.distribution or "-",
                    r.version or "-",
                    ",".join(h.removeprefix("caxton_") for h in r.hooks) or "-",
                    state(r),
                )
                for r in rows
            ],
        )
    )


# -------------------------------------------------------------------------
# caxton config
# -------------------------------------------------------------------------


@cli.group("config")
def config_group() -> None:
    """Show or validate configuration."""


@config_group.command("show")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Config file (default: $CAXTON_CONFIG_PATH).",
)
@click.option("--json", "as_json", is_flag=True)
@click.option("--sources", is_flag=True, help="Show where each value came from.")
@click.pass_context
def config_show(ctx: click.Context, config_path: str | None, as_json: bool, sources: bool) -> None:
    """Print the effective configuration (secrets masked), the sections of the drivers
    a node would use included."""
    from caxton.node import Node, build_host_and_config

    host, config = build_host_and_config(config_path, host=_shared_host(ctx))
    Node(config, host).check_drivers()
    if sources:
        data: Any = {key: origin for key, origin in sorted(config.sources.items())}
    else:
        data = config.to_dict(mask_secrets=True)
    if as_json:
        emit_json(data)
    else:
        click.echo(yaml.safe_dump(data, sort_keys=False).rstrip())


@config_group.command("validate")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--strict", is_flag=True, help="Keys that do nothing are errors, not warnings.")
@click.pass_context
def config_validate(ctx: click.Context, file: str, strict: bool) -> None:
    """Check FILE as `server start` would before it binds: exit 0 when it would start.

    Prints one line per problem that would stop start, and one warning per key that is
    accepted but does nothing (errors with --strict).
    """
    from caxton.node import Node, build_host_and_config
    from caxton.preflight import preflight

    host, config = build_host_and_config(file, host=_shared_host(ctx))
    report = preflight(Node(config, host))
    for warning in report.warnings:
        click.echo(f"{'Error' if strict else 'Warning'}: {file}: {warning}", err=True)
    for problem in report.problems:  # a key's error names its file already
        where = "" if problem.startswith(f"{file}: ") else f"{file}: "
        click.echo(f"Error: {where}{problem}", err=True)
    if report.problems or (strict and report.warnings):
        sys.exit(1)
    click.echo(
        f"{file}: valid" + (f" ({len(report.warnings)} warnings)" if report.warnings else "")
    )


# -------------------------------------------------------------------------
# caxton server
# -------------------------------------------------------------------------


@cli.group("server")
def server_group() -> None:
    """Run a node."""


@server_group.command("start")
@click.option("--node-id", help="Node id (default: host name).")
@click.option("--bind-addr", help="Gossip/transport address HOST:PORT (default 127.0.0.1:7946).")
@click.option("--api-addr", help="REST API address HOST:PORT (default 127.0.0.1:8080).")
@click.option("--metrics-addr", help="Metrics address HOST:PORT (default 127.0.0.1:9090).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="State directory.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Config file, TOML or YAML (default: $CAXTON_CONFIG_PATH).",
)
@click.option(
    "--plugin",
    "plugin_options",
    multiple=True,
    metavar="SPEC",
    help="kind=name selects a driver, pkg.module adds a hook plugin, no:NAME blocks one.",
)
@click.option("--bootstrap", is_flag=True, help="Start a new cluster with this node as seed.")
@click.option("--join", "join", default="", help="Seeds to join: HOST:PORT[,HOST:PORT...].")
@click.option(
    "--token",
    "join_token",
    envvar="CAXTON_JOIN_TOKEN",
    default=None,
    metavar="TOKEN",
    help="Join token (caxton cluster token create): get this node's certificate from the "
    "cluster CA through --join [env: CAXTON_JOIN_TOKEN].",
)
@click.option(
    "--cluster",
    "cluster",
    is_flag=True,
    help="Cluster: join coordination.cluster.seeds, or be the first node when there are none.",
)
@click.option("--strict", is_flag=True, help="A plugin that fails to load stops the node.")
@click.pass_context
def server_start(
    ctx: click.Context,
    node_id: str | None,
    bind_addr: str | None,
    api_addr: str | None,
    metrics_addr: str | None,
    data_dir: str | None,
    config_path: str | None,
    plugin_options: tuple[str, ...],
    bootstrap: bool,
    join: str,
    join_token: str | None,
    cluster: bool,
    strict: bool,
) -> None:
    """Start one node and serve until SIGINT/SIGTERM."""
    from caxton.logs import configure_logging
    from caxton.node import Node, build_host_and_config

    overrides: dict[str, Any] = {}
    for key, value in (
        ("node.id", node_id),
        ("coordination.cluster.bind_addr", bind_addr),
        ("networking.bind_address", api_addr),
        ("networking.metrics_address", metrics_addr),
        ("node.data_dir", data_dir),
    ):
        if value is not None:
            overrides[key] = value
    if strict:
        overrides["plugins.strict"] = True
    if cluster:
        overrides["coordination.cluster_enabled"] = True
    seeds = [s.strip() for s in join.split(",") if s.strip()]
    host = _shared_host(ctx)
    host.strict = host.strict or strict
    host_, config = build_host_and_config(
        config_path, plugin_options=plugin_options, overrides=overrides, host=host
    )
    node = Node(config, host_, bootstrap=bootstrap, join=seeds, join_token=join_token)
    configure_logging(observability=dict(config["observability"]), node_id=node.node_id)
    try:
        _run(node.run_until_signal())
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        sys.exit(130)


def _shared_host(ctx: click.Context) -> PluginHost:
    """The host :func:`main` built to find plugin commands, or a new one (tests)."""
    root = ctx.find_root()
    if not isinstance(root.obj, PluginHost):
        root.obj = PluginHost()
    return root.obj


def _run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


# -------------------------------------------------------------------------
# Assembly
# -------------------------------------------------------------------------


def _add_core_commands(group: click.Group) -> None:
    for module_name, attr in CORE_COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # that part of core is not built yet
            raise
        commands = getattr(module, attr)
        for command in commands if isinstance(commands, (list, tuple)) else [commands]:
            group.add_command(command)


def make_cli(host: PluginHost | None = None) -> click.Group:
    """The full command: core's commands plus those of installed hook plugins."""
    _add_core_commands(cli)
    if host is None:
        host = PluginHost()
    try:
        host.load_hook_plugins()  # idempotent: loaded, broken and blocked ones are skipped
        host.call_hook("caxton_cli_commands", cli=cli)
    except CaxtonError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    return cli


def blocked_in_argv(argv: Sequence[str]) -> list[str]:
    """Names given as ``--plugin no:NAME`` anywhere in ``argv``.

    Hook plugins are loaded before click parses the command line (they add commands),
    so a broken plugin must be blockable before that.
    """
    values = [v for flag, v in itertools.pairwise(argv) if flag == "--plugin"]
    values += [arg.removeprefix("--plugin=") for arg in argv if arg.startswith("--plugin=")]
    return [v.removeprefix("no:").strip() for v in values if v.startswith("no:")]


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    host = PluginHost(blocked=blocked_in_argv(args))
    make_cli(host).main(args=args, prog_name="caxton", obj=host)
