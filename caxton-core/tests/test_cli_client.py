"""The operator commands end to end against ``caxton server start`` in a subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from caxton.cli.main import make_cli
from caxton.plugins import PluginHost

NODE_ID = "cli-node"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CAXTON_")}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A node started with ``caxton server start``; yields its API URL."""
    data_dir = tmp_path_factory.mktemp("cli-node")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (data_dir / "server.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from caxton.cli.main import main; main()",
            "server",
            "start",
            "--node-id",
            NODE_ID,
            "--api-addr",
            f"127.0.0.1:{port}",
            "--metrics-addr",
            "127.0.0.1:0",
            "--bind-addr",
            "127.0.0.1:0",
            "--data-dir",
            str(data_dir),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=clean_env(),
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/api/v1/health", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "caxton server start did not come up:\n"
                        + (data_dir / "server.log").read_text()
                    ) from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(30)
        log.close()


@pytest.fixture(scope="module")
def command() -> click.Group:
    return make_cli(PluginHost())


@pytest.fixture
def caxton(server: str, command: click.Group) -> Any:
    """Run ``caxton ARGS`` in-process against the server; returns the click Result."""

    def run(*args: str, env: dict[str, str] | None = None) -> Result:
        runner = CliRunner()
        return runner.invoke(
            command, list(args), env={"CAXTON_API_URL": server, **(env or {})}, obj=PluginHost()
        )

    return run


@pytest.fixture(scope="module")
def wasm_files(
    tmp_path_factory: pytest.TempPathFactory, example_agents: dict[str, bytes]
) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("wasm")
    files = {}
    for name in ("echo", "no_handler"):
        path = directory / f"{name}.wasm"
        path.write_bytes(example_agents[name])
        files[name] = path
    garbage = directory / "garbage.wasm"
    garbage.write_bytes(b"not wasm")
    files["garbage"] = garbage
    return files


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def one_line_error(result: Result) -> str:
    """A failure: exit 1 and exactly one line on stderr."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def not_found(result: Result) -> str:
    """An unknown agent (the API's 404): exit 3 and one line on stderr."""
    assert result.exit_code == 3, result.output
    [line] = result.stderr.strip().splitlines()
    return line


def usage_error(result: Result) -> str:
    """A command-line mistake: exit 2, click's usage hint, the problem on the last line."""
    assert result.exit_code == 2, result.output
    return result.stderr.strip().splitlines()[-1]


# -------------------------------------------------------------------------
# deploy, agents list, agent get
# -------------------------------------------------------------------------


def test_deploy_with_limits_and_placement(caxton: Any, wasm_files: dict[str, Path]) -> None:
    out = ok(
        caxton(
            "deploy",
            str(wasm_files["echo"]),
            "--name",
            "echo-1",
            "--max-memory",
            "10MB",
            "--max-fuel",
            "1000000",
            "--timeout",
            "5s",
            "--placement-strategy",
            "least-loaded",
            "--prefer-nodes",
            f"{NODE_ID},node-2",
            "--target-node",
            NODE_ID,
        )
    )
    assert out.startswith("Deployed agent echo-1 (")
    assert out.rstrip().endswith(f"on node {NODE_ID}: running")
    agent = json.loads(ok(caxton("agent", "get", "echo-1", "--json")))
    assert agent["limits"]["max_memory_bytes"] == 10 * 1024 * 1024
    assert agent["limits"]["max_fuel"] == 1_000_000
    assert agent["limits"]["max_execution_time_ms"] == 5000


def test_deploy_several_files(caxton: Any, wasm_files: dict[str, Path], tmp_path: Path) -> None:
    paths = []
    for name in ("multi-a", "multi-b"):
        path = tmp_path / f"{name}.wasm"
        path.write_bytes(wasm_files["no_handler"].read_bytes())
        paths.append(str(path))
    reports = json.loads(ok(caxton("deploy", *paths, "--no-start", "--json")))
    assert [(r["file"], r["result"]) for r in reports] == [(p, "deployed") for p in paths]
    assert [(r["agent"]["name"], r["agent"]["state"]) for r in reports] == [
        ("multi-a", "loaded"),
        ("multi-b", "loaded"),
    ]
    error = usage_error(caxton("deploy", *paths, "--name", "x"))
    assert "--name names one agent" in error


def test_deploy_reports_each_file(caxton: Any, wasm_files: dict[str, Path], tmp_path: Path) -> None:
    paths = [str(tmp_path / f"{name}.wasm") for name in ("rep-a", "rep-bad", "rep-c")]
    Path(paths[0]).write_bytes(wasm_files["echo"].read_bytes())
    Path(paths[1]).write_bytes(b"not wasm")
    Path(paths[2]).write_bytes(wasm_files["echo"].read_bytes())
    result = caxton("deploy", *paths)
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Deployed agent rep-a (")
    assert lines[1].startswith(f"Failed {paths[1]}: Invalid WebAssembly module: ")
    assert lines[2].startswith("Deployed agent rep-c (")
    assert result.stderr.strip() == "Error: 1 of 3 files failed to deploy"

    for path in (paths[0], paths[2]):  # now taken: both fail; --fail-fast stops at the first
        Path(path).write_bytes(wasm_files["echo"].read_bytes())
    result = caxton("deploy", *paths, "--fail-fast", "--json")
    assert result.exit_code == 1, result.output
    reports = json.loads(result.stdout)
    assert [r["result"] for r in reports] == ["failed", "skipped", "skipped"]
    assert reports[0]["status"] == 409
    assert reports[0]["error"].startswith("Conflict: an agent named 'rep-a' already exists")
    assert result.stderr.strip() == (
        "Error: 1 of 3 files failed to deploy, 2 not tried (--fail-fast)"
    )


def test_deploy_errors_are_one_line(caxton: Any, wasm_files: dict[str, Path]) -> None:
    error = one_line_error(caxton("deploy", str(wasm_files["garbage"]), "--name", "bad"))
    assert error.startswith("Error: Invalid WebAssembly module: not a WebAssembly module")
    ok(caxton("deploy", str(wasm_files["echo"]), "--name", "dup"))
    error = one_line_error(caxton("deploy", str(wasm_files["echo"]), "--name", "dup"))
    assert error.startswith("Error: Conflict: an agent named 'dup' already exists")
    error = usage_error(caxton("deploy", str(wasm_files["echo"]), "--name", "x", "--max-fuel", "0"))
    assert "--max-fuel" in error
    error = usage_error(caxton("deploy", str(wasm_files["echo"]), "--max-memory", "lots"))
    assert "expected a size" in error
    error = one_line_error(caxton("deploy", "/no/such.wasm", "--name", "x"))
    assert "cannot read /no/such.wasm" in error


def test_agents_list(caxton: Any, wasm_files: dict[str, Path]) -> None:
    ok(caxton("deploy", str(wasm_files["echo"]), "--name", "listed"))
    lines = ok(caxton("agents", "list")).splitlines()
    assert lines[0].split() == ["NAME", "ID", "STATE", "NODE", "MEMORY", "MESSAGES", "RESTARTS"]
    [row] = [line.split() for line in lines[1:] if line.startswith("listed ")]
    assert row[2:4] == ["running", NODE_ID]
    agents = json.loads(ok(caxton("agents", "list", "--json")))
    assert "listed" in {a["name"] for a in agents}
    by_node = ok(caxton("agents", "list", "--by-node")).splitlines()
    assert by_node[0].split() == ["NODE", "AGENTS", "STATES"]
    assert by_node[1].split()[0] == NODE_ID
    counts = json.loads(ok(caxton("agents", "list", "--by-node", "--json")))
    assert counts[NODE_ID]["running"] >= 1


def test_agent_get(caxton: Any, wasm_files: dict[str, Path]) -> None:
    deployed = json.loads(
        ok(caxton("deploy", str(wasm_files["echo"]), "--name", "shown", "--json"))
    )
    out = ok(caxton("agent", "get", "shown"))
    assert f"ID:               {deployed['id']}" in out
    assert "State:            running" in out
    assert json.loads(ok(caxton("agent", "get", deployed["id"], "--json")))["name"] == "shown"
    error = not_found(caxton("agent", "get", "ghost"))
    assert error == "Error: Not found: Agent not found: ghost"


# -------------------------------------------------------------------------
# lifecycle, update, remove
# -------------------------------------------------------------------------


def test_lifecycle(caxton: Any, wasm_files: dict[str, Path]) -> None:
    ok(caxton("deploy", str(wasm_files["echo"]), "--name", "cycled"))
    assert ok(caxton("agent", "suspend", "cycled")).rstrip().endswith(": suspended")
    error = one_line_error(caxton("agent", "suspend", "cycled"))
    assert error.startswith("Error: Invalid state transition: cannot suspend agent 'cycled'")
    assert ok(caxton("agent", "resume", "cycled")).rstrip().endswith(": running")
    assert ok(caxton("agent", "stop", "cycled", "--drain", "1s")).rstrip().endswith(": stopped")
    state = json.loads(ok(caxton("agent", "start", "cycled", "--json")))["state"]
    assert state == "running"


def test_update(caxton: Any, wasm_files: dict[str, Path]) -> None:
    ok(caxton("deploy", str(wasm_files["no_handler"]), "--name", "swapped"))
    updated = json.loads(
        ok(
            caxton(
                "agent",
                "update",
                "swapped",
                "--wasm",
                str(wasm_files["echo"]),
                "--max-fuel",
                "5000",
                "--json",
            )
        )
    )
    assert updated["limits"]["max_fuel"] == 5000
    assert updated["state"] == "running"
    error = usage_error(caxton("agent", "update", "swapped"))
    assert "nothing to update" in error


def test_remove(caxton: Any, wasm_files: dict[str, Path]) -> None:
    ok(caxton("deploy", str(wasm_files["echo"]), "--name", "removed"))
    assert ok(caxton("agent", "remove", "removed")).startswith("Removed agent removed (")
    assert not_found(caxton("agent", "remove", "removed")).endswith("Agent not found: removed")


# -------------------------------------------------------------------------
# messages, queues, resources, emergency stop
# -------------------------------------------------------------------------


def test_message_send(caxton: Any, wasm_files: dict[str, Path]) -> None:
    ok(caxton("deploy", str(wasm_files["echo"]), "--name", "echo-msg"))
    out = ok(caxton("message", "send", "--to", "echo-msg", "--content", "hello", "--wait", "5s"))
    assert out == "Reply from echo-msg (inform): hello\n"
    out = ok(
        caxton("message", "send", "--to", "echo-msg", "--content-json", '{"n": 2}', "--wait", "5s")
    )
    assert out == 'Reply from echo-msg (inform): {"n": 2}\n'
    out = ok(
        caxton("message", "send", "--to", "echo-msg", "--content", "x", "--performative", "inform")
    )
    assert out.startswith("Sent inform to echo-msg (message ")
    result = json.loads(
        ok(
            caxton(
                "message", "send", "--to", "echo-msg", "--content", "j", "--wait", "5s", "--json"
            )
        )
    )
    assert result["reply"]["content"] == "j"
    error = not_found(caxton("message", "send", "--to", "nobody", "--content", "x"))
    assert error == "Error: Not found: Agent not found: nobody"


def test_queue_stats_and_drain(caxton: Any, wasm_files: dict[str, Path]) -> None:
    ok(caxton("deploy", str(wasm_files["echo"]), "--name", "queued"))
    ok(caxton("agent", "suspend", "queued"))
    for n in range(2):
        ok(
            caxton(
                "message", "send", "--to", "queued", "--content", str(n), "--performative", "inform"
            )
        )
    lines = ok(caxton("queue", "stats")).splitlines()
    assert lines[0].split() == [
        "AGENT", "QUEUED", "CRITICAL", "HIGH", "NORMAL", "LOW", "HELD", "DELIVERED",
    ]  # fmt: skip
    [row] = [line.split() for line in lines if line.startswith("queued ")]
    assert row[1] == "2"
    assert "Dead letters: 0" in lines[-1]
    stats = json.loads(ok(caxton("queue", "stats", "--json")))
    assert stats["agents"]["queued"]["queued"] == 2
    error = one_line_error(caxton("queue", "drain", "--timeout", "200ms"))
    assert error == "Error: queues not drained within 0.2s: 2 messages remain"
    ok(caxton("agent", "resume", "queued"))
    assert ok(caxton("queue", "drain", "--timeout", "10s")).startswith("Drained in ")
    assert json.loads(ok(caxton("queue", "drain", "--json")))["drained"] is True


def test_resources(caxton: Any) -> None:
    lines = ok(caxton("resources")).splitlines()
    assert lines[0].split() == ["NODE", "CPU", "MEMORY", "AGENTS"]
    node, cpu, memory, agents = lines[1].split()
    assert node == NODE_ID
    assert cpu.endswith("%")
    assert memory.endswith("MB")
    assert int(agents) >= 0
    data = json.loads(ok(caxton("resources", "--json")))
    assert data["nodes"][0]["node_id"] == NODE_ID


def test_emergency_stop(caxton: Any, wasm_files: dict[str, Path]) -> None:
    ok(caxton("deploy", str(wasm_files["echo"]), "--name", "stopped-hard"))
    out = ok(caxton("emergency", "stop", "--all-agents"))
    assert out.startswith("Emergency stop: ")
    assert int(out.split()[2]) >= 1
    assert json.loads(ok(caxton("agent", "get", "stopped-hard", "--json")))["state"] == "stopped"
    ok(caxton("agent", "start", "stopped-hard"))
    # The runbook's quick reference writes it without a flag.
    assert ok(caxton("emergency", "stop")).startswith("Emergency stop: ")
    assert json.loads(ok(caxton("agent", "get", "stopped-hard", "--json")))["state"] == "stopped"
    ok(caxton("agent", "start", "stopped-hard"))
    # A node not in a cluster is a cluster of one: it stops its own agents and says so.
    lines = ok(caxton("emergency", "stop", "--cluster")).splitlines()
    assert lines[0].startswith("Emergency stop: ")
    assert lines[1].endswith("agents stopped")
    assert json.loads(ok(caxton("agent", "get", "stopped-hard", "--json")))["state"] == "stopped"
    started = ok(caxton("emergency", "start"))
    assert started.startswith("cli-node: started ")
    assert "stopped-hard" in started.split("; ")[0]
    assert json.loads(ok(caxton("agent", "get", "stopped-hard", "--json")))["state"] == "running"


def test_backup_create_list_verify_as_the_runbook_writes_them(caxton: Any, tmp_path: Path) -> None:
    destination = tmp_path / "caxton" / "20240115"
    output = tmp_path / "local.tar.gz"
    created = json.loads(
        ok(caxton("backup", "create", "--type", "full", "--destination", f"{destination}/",
                  "--compress", "--output", str(output), "--json"))
    )  # fmt: skip
    assert created["type"] == "full"
    assert created["node_id"] == NODE_ID
    copied = destination / NODE_ID / f"{created['id']}.tar.gz"
    assert created["destination"] == str(copied)
    assert copied.read_bytes() == output.read_bytes() == Path(created["path"]).read_bytes()
    listed = json.loads(ok(caxton("backup", "list", "--json")))
    assert created["id"] in [b["id"] for b in listed]
    assert ok(caxton("backup", "verify", str(output))).startswith(f"{output}: OK: {created['id']}")
    data_dir = str(Path(created["path"]).parent.parent)
    verified = ok(caxton("backup", "verify", "--id", created["id"], "--data-dir", data_dir))
    assert "OK" in verified
    output.write_bytes(output.read_bytes()[:-100])
    assert "is damaged" in one_line_error(caxton("backup", "verify", str(output)))
    error = one_line_error(caxton("backup", "restore", "--id", created["id"], "--target",
                                  data_dir, "--node-id", NODE_ID))  # fmt: skip
    assert "is running" in error  # a running node is refused in one line


# -------------------------------------------------------------------------
# Connection problems and credentials
# -------------------------------------------------------------------------


def test_connection_refused_is_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    process = subprocess.run(
        [sys.executable, "-c", "from caxton.cli.main import main; main()", "agents", "list"],
        env={**clean_env(), "CAXTON_API_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert process.returncode == 1
    assert process.stdout == ""
    assert process.stderr == (
        f"Error: cannot reach the Caxton API at {url}: connection refused "
        f"(is `caxton server start` running?)\n"
    )


def test_bad_api_url(command: click.Group) -> None:
    result = CliRunner().invoke(command, ["resources", "--api-url", "localhost:8080"])
    assert one_line_error(result).startswith("Error: invalid API URL 'localhost:8080'")


class Recorder(BaseHTTPRequestHandler):
    """Answers every GET with ``answer`` and keeps the request headers."""

    seen: list[dict[str, str]] = []
    answer = b"[]"
    content_type = "application/json"

    def do_GET(self) -> None:
        type(self).seen.append({k.lower(): v for k, v in self.headers.items()})
        self.send_response(200)
        self.send_header("Content-Type", self.content_type)
        self.send_header("Content-Length", str(len(self.answer)))
        self.end_headers()
        self.wfile.write(self.answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, type[Recorder]]]:
    handler = type("ThisRecorder", (Recorder,), {"seen": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_credentials_from_flags_and_env(
    command: click.Group, recorder: tuple[str, type[Recorder]]
) -> None:
    url, handler = recorder
    runner = CliRunner()
    ok(runner.invoke(command, ["agents", "list", "--api-url", url, "--token", "t0k3n"]))
    ok(
        runner.invoke(
            command,
            ["agents", "list"],
            env={"CAXTON_API_URL": url, "CAXTON_API_KEY": "k3y", "CAXTON_TOKEN": ""},
        )
    )
    assert handler.seen[0]["authorization"] == "Bearer t0k3n"
    assert "x-api-key" not in handler.seen[0]
    assert handler.seen[1]["x-api-key"] == "k3y"
    assert "authorization" not in handler.seen[1]


def test_a_server_that_is_not_caxton(
    command: click.Group, recorder: tuple[str, type[Recorder]]
) -> None:
    url, handler = recorder
    handler.answer = b"<html>hello</html>"
    handler.content_type = "text/html"
    result = CliRunner().invoke(command, ["agents", "list", "--api-url", url])
    assert "did not answer with JSON" in one_line_error(result)


def test_every_command_is_documented() -> None:
    from caxton.cli.client import COMMANDS

    docs = (Path(__file__).parents[2] / "docs" / "cli.md").read_text()

    def paths(command: click.Command, prefix: str) -> Iterator[str]:
        name = f"{prefix} {command.name}"
        if isinstance(command, click.Group):
            for sub in command.commands.values():
                yield from paths(sub, name)
        else:
            yield name

    for command in COMMANDS:
        for path in paths(command, "caxton"):
            assert path in docs, f"docs/cli.md does not show {path!r}"


# -------------------------------------------------------------------------
# output formats, shell completion
# -------------------------------------------------------------------------


def test_output_formats(caxton: Any, wasm_files: dict[str, Path]) -> None:
    import yaml

    ok(caxton("deploy", str(wasm_files["echo"]), "--name", "formatted"))
    shown = yaml.safe_load(ok(caxton("agent", "get", "formatted", "--format", "yaml")))
    assert (shown["name"], shown["state"]) == ("formatted", "running")
    assert (
        json.loads(ok(caxton("agent", "get", "formatted", "--format", "json")))["id"] == shown["id"]
    )
    rows = ok(caxton("agents", "list", "--no-headers")).splitlines()
    assert rows
    assert not rows[0].startswith("NAME")
    assert any(row.split()[0] == "formatted" for row in rows)
    error = usage_error(caxton("agents", "list", "--json", "--format", "yaml"))
    assert "contradict" in error


def test_shell_completion_names_agents_and_nodes(
    server: str, command: click.Group, caxton: Any, wasm_files: dict[str, Path]
) -> None:
    ok(caxton("deploy", str(wasm_files["echo"]), "--name", "completed"))

    def complete(words: str) -> list[str]:
        env = {
            "_CAXTON_COMPLETE": "bash_complete",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(words.split()) - 1),
            "CAXTON_API_URL": server,
        }
        result = CliRunner().invoke(command, [], prog_name="caxton", env=env, obj=PluginHost())
        return result.output.splitlines()

    assert "plain,completed" in complete("caxton agent get comp")
    assert "plain,completed" in complete("caxton message send --to comp")
    assert f"plain,{NODE_ID}" in complete("caxton cluster ping cli-")
    assert f"plain,{NODE_ID}" in complete("caxton deploy x.wasm --target-node cli-")


def test_every_command_takes_json() -> None:
    """Every command has --json, but those whose output is not data: a node's log,
    validation messages and a generated project."""
    cli = make_cli(PluginHost(use_entry_points=False, env={}))

    def walk(command: click.Command, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                yield from walk(sub, f"{prefix} {name}".strip())
        else:
            yield prefix, command

    without = sorted(
        name
        for name, command in walk(cli)
        if not any("--json" in param.opts for param in command.params)
    )
    assert without == ["config validate", "plugin new", "server start"]


def test_security_commands_print_json(tmp_path: Path) -> None:
    runner = CliRunner()
    command = make_cli(PluginHost())
    made = runner.invoke(
        command, ["security", "init-ca", "--output", str(tmp_path / "ca"), "--json"]
    )
    assert made.exit_code == 0, made.output
    assert json.loads(made.stdout)["ca_cert"].endswith("ca.crt")
    issued = runner.invoke(
        command,
        ["security", "issue-cert", "--ca", str(tmp_path / "ca"), "--node-id", "n1",
         "--output", str(tmp_path / "n1"), "--format", "yaml"],
    )  # fmt: skip
    assert issued.exit_code == 0, issued.output
    assert "node_id: n1" in issued.stdout
