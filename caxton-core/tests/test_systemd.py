"""The systemd notify protocol, the top-level ``--config``, ``/etc/caxton`` and ``--cluster``."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from subprocess import Popen

import pytest
from click.testing import CliRunner
from test_cli import caxton, free_port, wait_healthy

from caxton import config as config_module
from caxton import systemd
from caxton.cli.main import make_cli
from caxton.config import load_config
from caxton.plugins import PluginHost


@contextlib.contextmanager
def node_process(*args: str, env: dict[str, str] | None = None) -> Iterator[Popen[str]]:
    """``caxton ARGS`` as a process, killed at the end if the test left it running."""
    process = caxton(*args, env=env)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


# -------------------------------------------------------------------------
# sd_notify
# -------------------------------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for systemd's notify socket."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(30)
        yield sock, str(path)


def test_notify_sends_the_state_to_notify_socket(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    assert systemd.notify("READY=1\nSTATUS=up", {"NOTIFY_SOCKET": path})
    assert sock.recv(4096) == b"READY=1\nSTATUS=up"


def test_notify_reaches_an_abstract_socket() -> None:
    name = f"caxton-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert systemd.notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"STOPPING=1"


def test_notify_outside_systemd_does_nothing(caplog: pytest.LogCaptureFixture) -> None:
    assert systemd.notify("READY=1", {}) is False
    assert not caplog.records


def test_notify_to_a_missing_socket_warns_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert systemd.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False
    assert "could not notify the service manager (READY=1)" in caplog.text


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "nonsense"}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}, 1.0),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process(
    env: dict[str, str], expected: float | None
) -> None:
    assert systemd.watchdog_interval(env) == expected


def test_a_node_process_speaks_the_notify_protocol(
    notify_socket: tuple[socket.socket, str], tmp_path: Path
) -> None:
    """READY=1 once it serves, WATCHDOG=1 at half WATCHDOG_USEC, STOPPING=1 on SIGTERM."""
    sock, path = notify_socket
    port = free_port()
    with node_process(
        "server",
        "start",
        "--node-id",
        "notified",
        "--api-addr",
        f"127.0.0.1:{port}",
        "--metrics-addr",
        "127.0.0.1:0",
        "--data-dir",
        str(tmp_path / "data"),
        env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"},  # no WATCHDOG_PID: any pid
    ) as process:
        ready = sock.recv(4096).decode()
        assert ready.startswith("READY=1\nSTATUS=node notified serving, API 127.0.0.1:")
        # READY=1 comes once the API serves, not before.
        assert wait_healthy(process, port) == {"status": "healthy"}
        assert sock.recv(4096) == b"WATCHDOG=1"
        assert sock.recv(4096) == b"WATCHDOG=1"
        process.send_signal(signal.SIGTERM)
        while (state := sock.recv(4096)) == b"WATCHDOG=1":
            pass
        assert state == b"STOPPING=1\nSTATUS=node notified stopping"
        _out, err = process.communicate(timeout=30)
        assert process.returncode == 0, err


# -------------------------------------------------------------------------
# Where the config comes from
# -------------------------------------------------------------------------


@pytest.fixture
def system_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the /etc/caxton defaults at a temporary directory."""
    etc = tmp_path / "etc-caxton"
    etc.mkdir()
    monkeypatch.setattr(
        config_module,
        "SYSTEM_CONFIG_FILES",
        (etc / "config.toml", etc / "config.yaml", etc / "config.yml"),
    )
    return etc


def test_the_system_config_is_read_when_no_other_is_given(system_config: Path) -> None:
    (system_config / "config.yaml").write_text("node:\n  id: from-etc\n")
    config = load_config(env={})
    assert config["node"]["id"] == "from-etc"
    assert config.sources["node.id"] == str(system_config / "config.yaml")


def test_toml_comes_before_yaml_in_the_system_directory(system_config: Path) -> None:
    (system_config / "config.toml").write_text('[node]\nid = "toml"\n')
    (system_config / "config.yaml").write_text("node:\n  id: yaml\n")
    assert load_config(env={})["node"]["id"] == "toml"


def test_caxton_config_path_wins_over_the_system_config(
    system_config: Path, tmp_path: Path
) -> None:
    (system_config / "config.toml").write_text('[node]\nid = "etc"\n')
    mine = tmp_path / "mine.toml"
    mine.write_text('[node]\nid = "mine"\n')
    assert load_config(env={"CAXTON_CONFIG_PATH": str(mine)})["node"]["id"] == "mine"
    assert load_config(mine, env={})["node"]["id"] == "mine"


def test_no_system_config_means_defaults(system_config: Path) -> None:
    config = load_config(env={})
    assert config.sources["node.id"] == "default"


def test_top_level_config_applies_to_every_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CAXTON_CONFIG_PATH", raising=False)
    mine = tmp_path / "mine.toml"
    mine.write_text('[node]\nid = "top-level"\n')
    result = CliRunner().invoke(make_cli(), ["--config", str(mine), "config", "show", "--json"])
    assert result.exit_code == 0, result.output
    assert '"id": "top-level"' in result.output


def test_caxton_config_alone_starts_a_node(tmp_path: Path) -> None:
    """The production guide's systemd line: ``caxton --config FILE``."""
    port = free_port()
    config = tmp_path / "production.toml"
    config.write_text(
        f'[node]\nid = "guide"\ndata_dir = "{tmp_path / "data"}"\n'
        f'[networking]\nbind_address = "127.0.0.1:{port}"\nmetrics_address = "127.0.0.1:0"\n'
    )
    with node_process("--config", str(config)) as process:
        assert wait_healthy(process, port) == {"status": "healthy"}
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert "node guide running" in err


def test_caxton_alone_still_prints_help() -> None:
    result = CliRunner().invoke(make_cli(), [])
    assert "Usage:" in result.output
    assert "server" in result.output


def test_server_start_cluster_clusters_without_seeds(tmp_path: Path) -> None:
    """``--cluster`` with no seeds makes the node the first of a new cluster."""
    port = free_port()
    config = tmp_path / "caxton.toml"
    config.write_text("[transport]\nplaintext = true\n")  # no certificates in this test
    with node_process(
        "server",
        "start",
        "--cluster",
        "--config",
        str(config),
        "--node-id",
        "clustered",
        "--api-addr",
        f"127.0.0.1:{port}",
        "--metrics-addr",
        "127.0.0.1:0",
        "--bind-addr",
        "127.0.0.1:0",
        "--data-dir",
        str(tmp_path / "data"),
    ) as process:
        if "tcp" not in PluginHost(env={}).available("transport"):
            # Clustering needs the selected transport: the error proves --cluster clustered.
            _out, err = process.communicate(timeout=60)
            assert process.returncode == 1
            assert "transport driver 'tcp' is not installed" in err
            return
        wait_healthy(process, port)
        url = f"http://127.0.0.1:{port}/api/v1/cluster/members"
        with urllib.request.urlopen(url, timeout=10) as response:
            members = json.loads(response.read())["members"]
        assert [(m["node_id"], m["status"]) for m in members] == [("clustered", "alive")]
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
