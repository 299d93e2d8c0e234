"""The ``caxton`` command: plugins, config, server start; one-line errors, no tracebacks.

In-process runs use click's CliRunner; ``caxton server start`` and everything that goes
through :func:`caxton.cli.main.main` (plugin commands, the argv blocklist) also run as
real subprocesses.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result
from test_plugins import (  # the site fixture installs throwaway plugin distributions
    BROKEN_ON_IMPORT,
    GOOD_HOOKS,
    MISSPELT_HOOKS,
    Site,
    hook_distribution,
    missing_first_party_driver,
    site_fixture,  # noqa: F401
    unique,
)

from caxton.cli.main import blocked_in_argv, cli
from caxton.plugins import PluginHost

MAIN = "from caxton.cli.main import main; main()"


def invoke(args: Sequence[str], env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def assert_one_line_error(output: str, expected: str) -> None:
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines[-1] == f"Error: {expected}"


# -------------------------------------------------------------------------
# caxton plugins
# -------------------------------------------------------------------------


def test_plugins_json_lists_core_defaults_as_entry_points() -> None:
    result = invoke(["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert set(rows[0]) == {
        "kind",
        "name",
        "distribution",
        "version",
        "target",
        "hooks",
        "selected",
        "blocked",
        "broken",
    }
    by_name = {(r["kind"], r["name"]): r for r in rows}
    for kind, name in [
        ("sandbox", "wasmtime"),
        ("placement", "least-loaded"),
        ("placement", "round-robin"),
        ("placement", "local"),
        ("partition_policy", "quorum"),
        ("membership", "swim"),
        ("auth", "api-key"),
    ]:
        row = by_name[(kind, name)]
        assert row["distribution"] == "caxton-core"
        assert row["broken"] is None, row["broken"]
    assert by_name[("placement", "least-loaded")]["selected"] is True
    assert by_name[("placement", "round-robin")]["selected"] is False
    assert by_name[("sandbox", "wasmtime")]["selected"] is True


def test_plugins_table() -> None:
    result = invoke(["plugins", "--plugin", "placement=round-robin"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["KIND", "NAME", "DISTRIBUTION", "VERSION", "HOOKS", "STATE"]
    row = next(line.split() for line in lines if " round-robin " in line)
    assert row[0] == "placement"
    assert row[2] == "caxton-core"
    assert row[-1] == "selected"
    row = next(line.split() for line in lines if " least-loaded " in line)
    assert row[-1] == "available"


def test_plugins_shows_third_party_hook_and_broken_plugins(site: Site) -> None:
    good, _ = hook_distribution(site, "caxton-audit", "2.0.1", GOOD_HOOKS)
    bad, _ = hook_distribution(site, "caxton-flaky", "1.2.3", BROKEN_ON_IMPORT)
    result = invoke(["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output) if r["kind"] == "hooks"}
    assert rows[good]["distribution"] == "caxton-audit"
    assert rows[good]["version"] == "2.0.1"
    assert rows[good]["hooks"] == ["caxton_node_started"]
    assert rows[bad]["broken"] == "RuntimeError: boom"
    assert rows[bad]["version"] == "1.2.3"
    table = invoke(["plugins"]).output
    assert "broken: RuntimeError: boom" in table
    assert "node_started" in table


def test_plugins_shows_blocked_plugins(site: Site) -> None:
    name, _ = hook_distribution(site, "caxton-audit", "2.0.1", GOOD_HOOKS)
    rows = json.loads(invoke(["plugins", "--json", "--plugin", f"no:{name}"]).output)
    assert next(r for r in rows if r["name"] == name)["blocked"] is True
    rows = json.loads(
        invoke(["plugins", "--json"], env={"CAXTON_DISABLED_PLUGINS": "round-robin"}).output
    )
    assert next(r for r in rows if r["name"] == "round-robin")["blocked"] is True


def test_plugins_with_a_misspelt_hook_is_one_line(site: Site) -> None:
    name, _ = hook_distribution(site, "caxton-typo", "0.1.0", MISSPELT_HOOKS)
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 1
    assert_one_line_error(
        result.output,
        f"plugin '{name}' implements unknown hook 'caxton_node_startd' "
        "(did you mean caxton_node_started?)",
    )


# -------------------------------------------------------------------------
# caxton config
# -------------------------------------------------------------------------


def test_config_show_masks_secrets(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[security]\njwt_secret = "${JWT_SECRET}"\n[runtime]\nmax_agents = 7\n')
    result = invoke(["config", "show", "--config", str(path)], env={"JWT_SECRET": "s3cret"})
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert shown["security"]["jwt_secret"] == "********"
    assert shown["runtime"]["max_agents"] == 7
    assert "s3cret" not in result.output


def test_config_show_from_config_path_variable_as_json(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("coordination:\n  cluster:\n    gossip_interval: 100ms\n")
    result = invoke(["config", "show", "--json"], env={"CAXTON_CONFIG_PATH": str(path)})
    assert json.loads(result.output)["coordination"]["cluster"]["gossip_interval"] == 0.1


def test_config_show_sources(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[runtime]\nmax_agents = 7\n")
    result = invoke(
        ["config", "show", "--sources", "--json", "--config", str(path)],
        env={"CAXTON_RUNTIME_AGENT_POOL_SIZE": "9"},
    )
    sources = json.loads(result.output)
    assert sources["runtime.max_agents"] == str(path)
    assert sources["runtime.agent_pool_size"] == "environment CAXTON_RUNTIME_AGENT_POOL_SIZE"
    assert sources["runtime.restart_max"] == "default"


def test_config_validate_a_good_file(tmp_path: Path) -> None:
    path = tmp_path / "good.toml"
    path.write_text('[runtime]\nmax_agents = 3\n[plugins]\nplacement = "round-robin"\n')
    result = invoke(["config", "validate", str(path)])
    assert (result.exit_code, result.output) == (0, f"{path}: valid\n")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[runtime]\nmax_agent = 3\n",
            "unknown key 'runtime.max_agent' (did you mean 'runtime.max_agents'?)",
        ),
        ('[runtime]\nmax_agents = "many"\n', "runtime.max_agents: expected an integer, got 'many'"),
        ("[runtime\n", "not valid TOML: "),
        ('[plugins]\nplacement = "zone-awre"\n', "placement driver 'zone-awre' is not installed"),
    ],
)
def test_config_validate_a_bad_file(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = CliRunner().invoke(cli, ["config", "validate", str(path)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert [line for line in result.output.splitlines() if line] == [
        line for line in result.output.splitlines() if line.startswith("Error: ")
    ]
    assert expected in result.output
    if not expected.startswith("placement"):
        assert f"Error: {path}: " in result.output


def test_config_show_and_validate_cover_the_selected_drivers_sections(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[sandbox.wasmtime]\nepoch_tick = 0.05\n")
    shown = json.loads(invoke(["config", "show", "--json", "--config", str(path)]).output)
    assert shown["sandbox"]["wasmtime"]["epoch_tick"] == 0.05
    assert invoke(["config", "validate", str(path)]).exit_code == 0
    path.write_text("[sandbox.wasmtime]\nepoch_tik = 0.05\n")
    result = CliRunner().invoke(cli, ["config", "validate", str(path)])
    assert result.exit_code == 1
    assert_one_line_error(
        result.output,
        f"{path}: unknown key 'sandbox.wasmtime.epoch_tik' "
        "(did you mean 'sandbox.wasmtime.epoch_tick'?)",
    )


def test_config_validate_a_missing_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["config", "validate", str(tmp_path / "nope.toml")])
    assert result.exit_code == 1
    assert_one_line_error(
        result.output,
        f"cannot read config file {tmp_path / 'nope.toml'}: No such file or directory",
    )


def test_bad_environment_variable_is_one_line() -> None:
    result = CliRunner().invoke(cli, ["config", "show"], env={"CAXTON_RUNTIME_MAX_AGENT": "1"})
    assert result.exit_code == 1
    assert_one_line_error(
        result.output,
        "environment: CAXTON_RUNTIME_MAX_AGENT does not name a config key "
        "(did you mean CAXTON_RUNTIME_MAX_AGENTS?)",
    )


def test_blocked_in_argv() -> None:
    argv = ["server", "start", "--plugin", "no:audit", "--plugin=no:flaky", "--plugin", "x=y"]
    assert blocked_in_argv(argv) == ["audit", "flaky"]


# -------------------------------------------------------------------------
# caxton server start, as a real process
# -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def caxton(
    *args: str, pythonpath: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CAXTON_")}
    full_env.update(env or {})
    if pythonpath is not None:
        full_env["PYTHONPATH"] = os.pathsep.join(
            [str(pythonpath), *filter(None, [full_env.get("PYTHONPATH")])]
        )
    return subprocess.Popen(
        [sys.executable, "-c", MAIN, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
    )


def run_caxton(*args: str, **kwargs: object) -> tuple[int, str, str]:
    process = caxton(*args, **kwargs)  # type: ignore[arg-type]
    out, err = process.communicate(timeout=60)
    return process.returncode, out, err


def wait_healthy(process: subprocess.Popen[str], port: int) -> dict[str, object]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"node exited early: {process.communicate()[1]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=2) as r:
                body: dict[str, object] = json.loads(r.read())
                return body
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.05)
    raise AssertionError("node did not answer /api/v1/health within 60s")


@pytest.fixture
def started(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    process = caxton(
        "server",
        "start",
        "--node-id",
        "cli-test",
        "--metrics-addr",
        "127.0.0.1:0",
        "--api-addr",
        f"127.0.0.1:{port}",
        "--data-dir",
        str(tmp_path / "data"),
    )
    yield process, port
    if process.poll() is None:
        process.kill()
        process.communicate()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_server_start_serves_health_and_stops_cleanly(
    started: tuple[subprocess.Popen[str], int], sig: signal.Signals
) -> None:
    process, port = started
    assert wait_healthy(process, port) == {"status": "healthy"}
    process.send_signal(sig)
    _out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "Traceback" not in err
    assert "node cli-test running" in err
    assert "plugins: partition_policy=quorum, placement=least-loaded, sandbox=wasmtime" in err
    assert "node cli-test shutting down" in err


def test_a_second_node_on_the_same_data_directory_fails_at_once(
    started: tuple[subprocess.Popen[str], int], tmp_path: Path
) -> None:
    first, port = started
    wait_healthy(first, port)
    started_at = time.monotonic()
    code, _out, err = run_caxton(
        "server", "start", "--node-id", "second", "--api-addr", "127.0.0.1:0",
        "--metrics-addr", "127.0.0.1:0", "--data-dir", str(tmp_path / "data"),
    )  # fmt: skip
    assert code == 1
    assert time.monotonic() - started_at < 30  # at once, not after restoring anything
    assert_one_line_error(
        err,
        f"the data directory {tmp_path / 'data'} is in use by another node (pid {first.pid}); "
        "stop it first, or give this node its own --data-dir",
    )
    assert wait_healthy(first, port) == {"status": "healthy"}  # the first one goes on


def test_server_start_accepts_the_cluster_flags(tmp_path: Path) -> None:
    """--bootstrap makes the node cluster, which needs the selected transport (tcp)."""
    port = free_port()
    config = tmp_path / "caxton.toml"
    config.write_text("[transport]\nplaintext = true\n")  # no certificates in this test
    process = caxton(
        "server",
        "start",
        "--config",
        str(config),
        "--node-id",
        "n1",
        "--metrics-addr",
        "127.0.0.1:0",
        "--api-addr",
        f"127.0.0.1:{port}",
        "--bind-addr",
        "127.0.0.1:0",
        "--data-dir",
        str(tmp_path / "d"),
        "--bootstrap",
        "--plugin",
        "placement=round-robin",
    )
    try:
        if "tcp" not in PluginHost(env={}).available("transport"):
            _out, err = process.communicate(timeout=60)
            assert process.returncode == 1
            assert err.strip().splitlines() == [
                "Error: transport driver 'tcp' is not installed (installed transport drivers: "
                f"{', '.join(PluginHost(env={}).available('transport')) or 'none'}); "
                "install it with: pip install caxton-transport-tcp"
            ]
            return
        assert wait_healthy(process, port) == {"status": "healthy"}
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert "placement=round-robin" in err
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_server_start_with_bad_config_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("networking:\n  bind_adress: 127.0.0.1:1\n")
    code, _out, err = run_caxton("server", "start", "--config", str(path))
    assert code == 1
    assert_one_line_error(
        err,
        f"{path}: unknown key 'networking.bind_adress' (did you mean 'networking.bind_address'?)",
    )
    assert len(err.strip().splitlines()) == 1


def test_server_start_with_a_missing_driver_names_what_to_install(tmp_path: Path) -> None:
    missing = missing_first_party_driver()
    kind, name = (missing[0], missing[1]) if missing else ("transport", "carrier-pigeon")
    code, _out, err = run_caxton(
        "server",
        "start",
        "--plugin",
        f"{kind}={name}",
        "--api-addr",
        "127.0.0.1:0",
        "--metrics-addr",
        "127.0.0.1:0",
        "--data-dir",
        str(tmp_path / "d"),
    )
    assert code == 1
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"Error: {kind} driver '{name}' is not installed (installed {kind} ")
    hint = (
        f"install it with: pip install {missing[2]}"
        if missing
        else f"a plugin must publish it in the entry-point group 'caxton.{kind}'"
    )
    assert err.strip().endswith(hint)


def test_server_start_with_a_broken_plugin_starts_unless_strict(site: Site, tmp_path: Path) -> None:
    hook_distribution(site, "caxton-flaky", "1.2.3", BROKEN_ON_IMPORT)
    port = free_port()
    process = caxton(
        "server",
        "start",
        "--metrics-addr",
        "127.0.0.1:0",
        "--api-addr",
        f"127.0.0.1:{port}",
        "--data-dir",
        str(tmp_path / "d"),
        pythonpath=site.path,
    )
    try:
        assert wait_healthy(process, port) == {"status": "healthy"}
        process.send_signal(signal.SIGINT)
        _out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0
    assert "Traceback" not in err
    assert err.splitlines()[0] == (
        "plugin 'flaky' (caxton-flaky 1.2.3) failed to load: RuntimeError: boom; "
        "continuing without it (use --plugin no:flaky to silence)"
    )

    code, _out, err = run_caxton(
        "server",
        "start",
        "--strict",
        "--metrics-addr",
        "127.0.0.1:0",
        "--api-addr",
        "127.0.0.1:0",
        pythonpath=site.path,
    )
    assert code == 1
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "Error: plugin 'flaky' (caxton-flaky 1.2.3) failed to load: RuntimeError: boom "
        "(strict mode)"
    )


def test_blocking_a_broken_plugin_on_the_command_line(site: Site) -> None:
    hook_distribution(site, "caxton-typo", "0.1.0", MISSPELT_HOOKS)
    code, _out, err = run_caxton("plugins", pythonpath=site.path)
    assert code == 1
    assert err.strip().startswith("Error: plugin 'typo' implements unknown hook")
    assert len(err.strip().splitlines()) == 1
    code, out, err = run_caxton("plugins", "--plugin", "no:typo", pythonpath=site.path)
    assert code == 0, err
    row = next(line.split() for line in out.splitlines() if line.startswith("hooks "))
    assert row[:2] == ["hooks", "typo"]
    assert row[-1] == "blocked"
    code, out, err = run_caxton(
        "plugins", pythonpath=site.path, env={"CAXTON_DISABLED_PLUGINS": "typo"}
    )
    assert code == 0, err


def test_server_start_registers_an_uninstalled_module(site: Site, tmp_path: Path) -> None:
    module = site.module(
        unique("devroutes"),
        """
        from aiohttp import web
        from caxton import hookimpl

        @hookimpl
        def caxton_api_routes(node):
            async def hello(request):
                return web.json_response({"hello": node.node_id})

            app = web.Application()
            app.router.add_get("/hello", hello)
            return [("/api/v1/plugins/dev", app)]
        """,
    )
    port = free_port()
    process = caxton(
        "server",
        "start",
        "--node-id",
        "dev-node",
        "--plugin",
        module,
        "--api-addr",
        f"127.0.0.1:{port}",
        "--metrics-addr",
        "127.0.0.1:0",
        "--data-dir",
        str(tmp_path / "d"),
        pythonpath=site.path,
    )
    try:
        wait_healthy(process, port)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/plugins/dev/hello") as r:
            assert json.loads(r.read()) == {"hello": "dev-node"}
        process.send_signal(signal.SIGINT)
        _out, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_a_plugin_failing_to_add_commands_is_one_line(site: Site) -> None:
    name, _ = hook_distribution(
        site,
        "caxton-clumsy",
        "0.0.1",
        """
        from caxton import hookimpl

        @hookimpl
        def caxton_cli_commands(cli):
            raise RuntimeError("no commands today")
        """,
    )
    code, _out, err = run_caxton("plugins", pythonpath=site.path)
    assert code == 1
    assert err.strip().splitlines() == [
        f"Error: plugin '{name}' failed in caxton_cli_commands: RuntimeError: no commands today"
    ]


def test_hook_plugins_add_commands(site: Site) -> None:
    hook_distribution(
        site,
        "caxton-hello",
        "1.0",
        """
        import click
        from caxton import hookimpl

        @click.command("hello")
        def hello():
            click.echo("hello from a plugin")

        @hookimpl
        def caxton_cli_commands(cli):
            cli.add_command(hello)
        """,
    )
    code, out, err = run_caxton("hello", pythonpath=site.path)
    assert (code, out) == (0, "hello from a plugin\n"), err
    code, _out, err = run_caxton("hello", "--plugin", "no:hello", pythonpath=site.path)
    assert code == 2
    assert "No such command 'hello'" in err
