"""``caxton config validate`` runs the checks ``server start`` runs before it binds, and
warns about keys that are accepted and do nothing (errors with ``--strict``)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from caxton.cli.main import cli
from caxton.config import CORE_SECTIONS
from caxton.errors import CaxtonError
from caxton.inert_keys import INERT_KEYS
from caxton.node import Node, build_host_and_config


def validate(path: Path, *extra: str) -> tuple[int, list[str]]:
    result = CliRunner().invoke(cli, ["config", "validate", str(path), *extra])
    assert "Traceback" not in result.output
    return result.exit_code, [line for line in result.output.splitlines() if line]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[networking]\nbind_address = "0.0.0.0:8080"\n',
            "refusing to serve the API on 0.0.0.0 without authentication",
        ),
        (
            "[networking]\ntls_enabled = true\n",
            "networking.tls_enabled is true but networking.tls_cert_path",
        ),
        (
            '[networking]\ntls_enabled = true\ntls_cert_path = "/nonexistent/api.crt"\n'
            'tls_key_path = "/nonexistent/api.key"\n',
            "cannot load the API's TLS certificate /nonexistent/api.crt",
        ),
        (
            "[coordination]\ncluster_enabled = true\n",
            "node-to-node traffic needs mutual TLS",
        ),
        (
            "[coordination]\ncluster_enabled = true\n[security.cluster.mtls]\nenabled = true\n",
            "security.cluster.mtls is enabled but ca_cert, node_cert, node_key are not set",
        ),
        (
            "[coordination]\ncluster_enabled = true\n[security.cluster.mtls]\nenabled = true\n"
            'ca_cert = "/nonexistent/ca.crt"\nnode_cert = "/nonexistent/n.crt"\n'
            'node_key = "/nonexistent/n.key"\n',
            "cannot load CA certificate /nonexistent/ca.crt",
        ),
        (
            "[coordination]\ncluster_enabled = true\n[transport]\nplaintext = true\n"
            "[security.cluster.mtls]\nenabled = true\n"
            'ca_cert = "a"\nnode_cert = "b"\nnode_key = "c"\n',
            "transport.plaintext = true contradicts security.cluster.mtls.enabled",
        ),
        (
            "[security]\nauth_enabled = true\n[plugins]\nauth = []\n",
            "security.auth_enabled is true but plugins.auth is empty",
        ),
    ],
)
def test_validate_refuses_what_start_refuses(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "node.toml"
    path.write_text(f'[node]\ndata_dir = "{tmp_path / "data"}"\n{text}')
    code, lines = validate(path)
    assert code == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"Error: {path}: ")
    assert expected in lines[0]
    # start refuses it with the same words, before it binds anything
    host, config = build_host_and_config(path)
    with pytest.raises(CaxtonError) as refused:
        Node(config, host).preflight()
    assert str(refused.value) == lines[0].split(": ", 2)[2]


def test_validate_names_every_problem_at_once(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        '[networking]\nbind_address = "0.0.0.0:8080"\ntls_enabled = true\n'
        "[coordination]\ncluster_enabled = true\n"
    )
    code, lines = validate(path)
    assert code == 1
    assert len(lines) == 3
    assert all(line.startswith("Error: ") for line in lines)


def test_a_clustered_plaintext_config_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text("[coordination]\ncluster_enabled = true\n[transport]\nplaintext = true\n")
    assert validate(path) == (0, [f"{path}: valid"])


def test_keys_that_do_nothing_are_warnings_and_strict_makes_them_errors(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        '[transport]\ncongestion_control = "bbr"\nmax_streams = 100\n'
        '[messaging]\nparallel_routes = 8\n[networking]\nadmin_address = "127.0.0.1:9091"\n'
        "[runtime]\nmax_agents = 5\n"
    )
    code, lines = validate(path)
    assert code == 0
    warned = sorted(line.split(": ")[2].split(" ")[0] for line in lines[:-1])
    assert warned == [
        "messaging.parallel_routes",
        "networking.admin_address",
        "transport.congestion_control",
        "transport.max_streams",
    ]
    assert all(line.startswith(f"Warning: {path}: ") for line in lines[:-1])
    assert "[transport.quic] congestion_control" in "\n".join(lines)
    assert lines[-1] == f"{path}: valid (4 warnings)"

    code, lines = validate(path, "--strict")
    assert code == 1
    assert len(lines) == 4
    assert all(line.startswith(f"Error: {path}: ") for line in lines)


def test_start_logs_a_warning_for_each_key_that_does_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "node.toml"
    path.write_text("[runtime]\ncpu_quota = 2.0\n")
    host, config = build_host_and_config(path)
    with caplog.at_level(logging.WARNING, logger="caxton.node"):
        Node(config, host).preflight()
    assert [r.getMessage() for r in caplog.records] == [
        f"config: runtime.cpu_quota (set in {path}) does nothing: "
        + INERT_KEYS["runtime.cpu_quota"]
    ]


def test_every_inert_key_is_a_declared_key() -> None:
    from caxton_transport_quic.driver import QUIC_SECTION

    sections = (*CORE_SECTIONS, QUIC_SECTION)
    declared = {f"{section.path}.{f.name}" for section in sections for f in section.fields}
    assert set(INERT_KEYS) <= declared
