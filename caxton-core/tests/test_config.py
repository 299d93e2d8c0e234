"""Configuration: files (TOML, YAML), ${ENV}, CAXTON_* overrides, precedence, errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from caxton.config import (
    CORE_SECTIONS,
    NON_CONFIG_ENV,
    SECRET_MASK,
    ConfigSection,
    Field,
    env_name,
    load_config,
)
from caxton.errors import ConfigError

# The production guide's file, verbatim.
PRODUCTION_TOML = """
[runtime]
# Agent execution limits
max_agents = 1000
max_concurrent_executions = 100
wasm_memory_limit = "512MB"
wasm_stack_limit = "1MB"
execution_timeout = "30s"
agent_idle_timeout = "300s"

# Resource management
cpu_quota = "8.0"  # CPU cores
memory_limit = "16GB"
temp_storage_limit = "10GB"

[networking]
bind_address = "0.0.0.0:8080"
metrics_address = "0.0.0.0:9090"
admin_address = "127.0.0.1:8081"
max_connections = 10000
connection_timeout = "30s"
request_timeout = "60s"
keepalive_timeout = "60s"
tls_enabled = true
tls_cert_path = "/opt/caxton/config/server.crt"
tls_key_path = "/opt/caxton/config/server.key"
tls_ca_path = "/opt/caxton/config/ca.crt"

[coordination]
local_state_path = "/opt/caxton/data/local.db"
journal_mode = "WAL"
cluster_enabled = true
bind_addr = "0.0.0.0:7946"
advertise_addr = "auto"
seeds = [
  "caxton-node-1:7946",
  "caxton-node-2:7946",
  "caxton-node-3:7946"
]
gossip_interval = "200ms"
probe_interval = "1s"

[observability]
log_level = "info"
log_format = "json"
log_file = "/opt/caxton/logs/caxton.log"
log_rotation = "daily"
log_retention_days = 30
enable_metrics = true
metrics_prefix = "caxton"
histogram_buckets = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
enable_tracing = true
trace_sample_rate = 0.1
otlp_endpoint = "http://jaeger-collector:14268/api/traces"
otlp_timeout = "10s"

[security]
auth_enabled = true
jwt_secret = "${JWT_SECRET}"
jwt_expiry = "1h"
api_key_header = "X-API-Key"
rate_limit_enabled = true
rate_limit_per_second = 100
rate_limit_burst = 200
cors_enabled = true
cors_origins = ["https://dashboard.example.com"]
cors_methods = ["GET", "POST", "PUT", "DELETE"]
"""

# The clustering guide's /etc/caxton/cluster.yaml, verbatim.
CLUSTER_YAML = """
coordination:
  cluster:
    # SWIM protocol settings
    bind_addr: 0.0.0.0:7946
    advertise_addr: ${HOSTNAME}:7946

    # Seed nodes for joining
    seeds:
      - caxton-1.example.com:7946
      - caxton-2.example.com:7946
      - caxton-3.example.com:7946

    # Gossip parameters
    gossip_interval: 200ms
    gossip_fanout: 3
    probe_interval: 1s
    probe_timeout: 500ms

  # Partition handling
  partition:
    detection_timeout: 5s
    quorum_size: 2
    degraded_mode: true
    queue_writes: true
"""

# The performance guide's high-throughput profile, verbatim.
THROUGHPUT_YAML = """
runtime:
  max_agents: 5000
  agent_pool_size: 100  # Pre-warm agents
  max_concurrent_messages: 10000

messaging:
  queue_size: 100000
  batch_size: 1000  # Process in batches
  delivery_timeout: 5s
  enable_persistence: false  # Trade durability for speed
  parallel_routes: 8
  worker_threads: 16

coordination:
  cluster:
    gossip_interval: 500ms
    gossip_fanout: 2  # Reduce gossip overhead

transport:
  type: quic  # Better performance than TCP
  max_streams: 1000
  congestion_control: bbr  # Better for high throughput
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str, name: str = "c.toml") -> tuple[Path, str]:
    """Write ``text`` to a config file; return its path and the ConfigError's message."""
    path = write(tmp_path, name, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    return path, str(info.value)


# -- defaults ---------------------------------------------------------------------


def test_defaults_without_a_file() -> None:
    config = load_config(env={})
    assert config["networking"]["bind_address"] == "127.0.0.1:8080"
    assert config["networking"]["metrics_address"] == "127.0.0.1:9090"
    assert config["coordination.cluster"]["bind_addr"] == "127.0.0.1:7946"
    assert config["coordination.cluster"]["gossip_interval"] == pytest.approx(0.2)
    assert config["runtime"]["wasm_memory_limit"] == 512 * 1024**2
    assert config["plugins"]["sandbox"] == "wasmtime"
    assert config.path is None
    assert config.sources["runtime.max_agents"] == "default"


def test_every_default_is_valid_for_its_own_field() -> None:
    for section in CORE_SECTIONS:
        for field in section.fields:
            field.convert(field.default)  # raises on a bad default


# -- the product documents' files ------------------------------------------------


def test_production_guide_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "production.toml", PRODUCTION_TOML)
    config = load_config(path, env={"JWT_SECRET": "s3cret"})
    assert config["runtime"]["execution_timeout"] == 30.0
    assert config["runtime"]["memory_limit"] == 16 * 1024**3
    assert config["runtime"]["cpu_quota"] == 8.0
    assert config["networking"]["tls_enabled"] is True
    # Flat [coordination] keys land in [coordination.cluster].
    cluster = config["coordination.cluster"]
    assert cluster["bind_addr"] == "0.0.0.0:7946"
    assert cluster["seeds"] == ["caxton-node-1:7946", "caxton-node-2:7946", "caxton-node-3:7946"]
    assert cluster["gossip_interval"] == pytest.approx(0.2)
    assert cluster["probe_interval"] == 1.0
    assert "bind_addr" not in config["coordination"]
    assert config["security"]["jwt_secret"] == "s3cret"
    assert config["observability"]["histogram_buckets"][-1] == 10.0
    assert config.sources["coordination.cluster.bind_addr"] == str(path)


def test_clustering_guide_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "cluster.yaml", CLUSTER_YAML)
    config = load_config(path, env={"HOSTNAME": "node-7"})
    cluster = config["coordination.cluster"]
    assert cluster["advertise_addr"] == "node-7:7946"
    assert cluster["probe_timeout"] == 0.5
    assert cluster["seeds"][0] == "caxton-1.example.com:7946"
    # coordination.partition is the [partition] section.
    assert config["partition"]["quorum_size"] == 2
    assert config["partition"]["detection_timeout"] == 5.0


def test_performance_guide_yaml_selects_the_transport(tmp_path: Path) -> None:
    path = write(tmp_path, "throughput.yml", THROUGHPUT_YAML)
    config = load_config(path, env={})
    assert config["plugins"]["transport"] == "quic"  # transport.type is an alias
    assert config["messaging"]["worker_threads"] == 16
    assert config["coordination.cluster"]["gossip_fanout"] == 2


def test_production_guide_fine_tuning_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "tuned.toml",
        """
        [runtime]
        max_agents = 2000
        max_concurrent_executions = 200
        wasm_memory_limit = "1GB"
        agent_startup_timeout = "10s"
        agent_shutdown_timeout = "5s"
        gc_interval = "60s"
        memory_pressure_threshold = 0.8
        agent_memory_reclaim = true
        """,
    )
    runtime = load_config(path, env={})["runtime"]
    assert runtime["agent_startup_timeout"] == 10.0
    assert runtime["memory_pressure_threshold"] == 0.8


def test_custom_partition_strategy_from_the_clustering_guide(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "partition.yaml",
        """
        partition:
          strategy: custom
          custom_handler: /usr/local/bin/partition-handler
          decisions:
            - condition: "nodes < quorum"
              action: "read-only"
        """,
    )
    config = load_config(path, env={})
    assert config["plugins"]["partition_policy"] == "custom"
    assert config["partition"]["decisions"][0]["action"] == "read-only"


# -- ${ENV} -----------------------------------------------------------------------


def test_env_reference_set(tmp_path: Path) -> None:
    path = write(tmp_path, "c.toml", '[node]\ndata_dir = "${STATE}/caxton"\n')
    assert load_config(path, env={"STATE": "/srv"})["node"]["data_dir"] == "/srv/caxton"


def test_env_reference_default(tmp_path: Path) -> None:
    path = write(tmp_path, "c.toml", '[runtime]\nmax_agents = "${MAX_AGENTS:-42}"\n')
    assert load_config(path, env={})["runtime"]["max_agents"] == 42
    assert load_config(path, env={"MAX_AGENTS": "7"})["runtime"]["max_agents"] == 7


def test_env_reference_missing_names_file_key_and_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "c.toml", '[security]\njwt_secret = "${JWT_SECRET}"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert str(path) in message
    assert "security.jwt_secret" in message
    assert "${JWT_SECRET} is not set" in message
    assert "\n" not in message


def test_env_reference_inside_lists(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", "coordination:\n  cluster:\n    seeds: ['${SEED}:7946']\n")
    seeds = load_config(path, env={"SEED": "n1"})["coordination.cluster"]["seeds"]
    assert seeds == ["n1:7946"]


# -- CAXTON_* overrides and precedence --------------------------------------------


def test_caxton_env_overrides_a_key() -> None:
    config = load_config(env={"CAXTON_RUNTIME_MAX_AGENTS": "12"})
    assert config["runtime"]["max_agents"] == 12
    assert config.sources["runtime.max_agents"] == "environment CAXTON_RUNTIME_MAX_AGENTS"


def test_caxton_env_for_nested_sections_and_lists() -> None:
    config = load_config(
        env={
            "CAXTON_COORDINATION_CLUSTER_SEEDS": "a:7946, b:7946",
            "CAXTON_COORDINATION_CLUSTER_GOSSIP_INTERVAL": "100ms",
            "CAXTON_SECURITY_CLUSTER_MTLS_ENABLED": "true",
        }
    )
    assert config["coordination.cluster"]["seeds"] == ["a:7946", "b:7946"]
    assert config["coordination.cluster"]["gossip_interval"] == pytest.approx(0.1)
    assert config["security.cluster.mtls"]["enabled"] is True


def test_env_aliases_from_the_product_documents() -> None:
    config = load_config(env={"CAXTON_LOG_LEVEL": "debug", "CAXTON_METRICS_ENABLED": "false"})
    assert config["observability"]["log_level"] == "debug"
    assert config["observability"]["enable_metrics"] is False


def test_env_name_matches_what_load_config_reads() -> None:
    checked = 0
    for section in CORE_SECTIONS:
        for field in section.fields:
            if field.type in {"table", "any"}:
                continue  # tables do not come from the environment
            dotted = f"{section.path}.{field.name}"
            name = env_name(dotted)
            if name in NON_CONFIG_ENV:
                continue  # CAXTON_PLUGINS_STRICT: read by the plugin host itself
            config = load_config(env={name: _env_text(field)})
            assert config.sources[_canonical(dotted)] == f"environment {name}"
            checked += 1
    assert checked > 100


def _env_text(field: Field) -> str:
    samples = {
        "str": "x",
        "int": "3",
        "float": "0.5",
        "bool": "true",
        "duration": "2s",
        "size": "2MB",
        "address": "127.0.0.1:1",
        "list": "a,b",
        "list[str]": "a,b",
    }
    if field.choices:
        return str(field.choices[0])
    return samples[field.type]


def _canonical(dotted: str) -> str:
    from caxton.config import ALIASES

    return ALIASES.get(dotted, dotted)


def test_unknown_caxton_variable_is_an_error_with_a_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"CAXTON_RUNTIME_MAX_AGENT does not name a config key"):
        load_config(env={"CAXTON_RUNTIME_MAX_AGENT": "5"})
    with pytest.raises(ConfigError, match=r"did you mean CAXTON_RUNTIME_MAX_AGENTS\?"):
        load_config(env={"CAXTON_RUNTIME_MAX_AGENT": "5"})


def test_non_config_variables_are_ignored() -> None:
    env = {
        "CAXTON_API_URL": "http://x",
        "CAXTON_TOKEN": "t",
        "CAXTON_DISABLED_PLUGINS": "a,b",
        "CAXTON_PLUGINS_STRICT": "1",
        "HOME": "/root",
    }
    assert load_config(env=env)["runtime"]["max_agents"] == 1000


def test_config_path_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "c.toml", "[runtime]\nmax_agents = 3\n")
    config = load_config(env={"CAXTON_CONFIG_PATH": str(path)})
    assert config["runtime"]["max_agents"] == 3
    assert config.path == path


def test_explicit_path_wins_over_config_path_variable(tmp_path: Path) -> None:
    one = write(tmp_path, "one.toml", "[runtime]\nmax_agents = 1\n")
    two = write(tmp_path, "two.toml", "[runtime]\nmax_agents = 2\n")
    config = load_config(two, env={"CAXTON_CONFIG_PATH": str(one)})
    assert config["runtime"]["max_agents"] == 2


def test_precedence_flags_over_env_over_file_over_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.toml",
        """
        [runtime]
        max_agents = 10
        agent_pool_size = 10
        restart_max = 10
        """,
    )
    env = {"CAXTON_RUNTIME_MAX_AGENTS": "20", "CAXTON_RUNTIME_AGENT_POOL_SIZE": "20"}
    config = load_config(path, env=env, overrides={"runtime.max_agents": 30})
    runtime = config["runtime"]
    assert runtime["max_agents"] == 30  # flag
    assert runtime["agent_pool_size"] == 20  # environment
    assert runtime["restart_max"] == 10  # file
    assert runtime["max_concurrent_executions"] == 100  # default
    assert config.sources["runtime.max_agents"] == "flags"
    assert config.sources["runtime.agent_pool_size"] == "environment CAXTON_RUNTIME_AGENT_POOL_SIZE"
    assert config.sources["runtime.restart_max"] == str(path)
    assert config.sources["runtime.max_concurrent_executions"] == "default"


def test_environment_alias_beats_the_file_canonical_key(tmp_path: Path) -> None:
    path = write(tmp_path, "c.toml", '[coordination.cluster]\nbind_addr = "10.0.0.1:7946"\n')
    config = load_config(path, env={"CAXTON_COORDINATION_BIND_ADDR": "10.0.0.2:7946"})
    assert config["coordination.cluster"]["bind_addr"] == "10.0.0.2:7946"


def test_canonical_key_beats_its_alias_in_one_file(tmp_path: Path) -> None:
    alias = '[coordination]\nbind_addr = "1.1.1.1:1"\n'
    canonical = '[coordination.cluster]\nbind_addr = "2.2.2.2:2"\n'
    for text in (alias + canonical, canonical + alias):
        path = write(tmp_path, "c.toml", text)
        assert load_config(path, env={})["coordination.cluster"]["bind_addr"] == "2.2.2.2:2"


def test_flag_alias_selects_a_driver() -> None:
    assert load_config(env={}, overrides={"transport.type": "quic"})["plugins"]["transport"] == (
        "quic"
    )


# -- errors: one line, naming file and key -----------------------------------------


def test_unknown_key_names_file_key_and_suggestion(tmp_path: Path) -> None:
    path, message = load_error(tmp_path, "[runtime]\nmax_agent = 5\n")
    assert message == (
        f"{path}: unknown key 'runtime.max_agent' (did you mean 'runtime.max_agents'?)"
    )


def test_unknown_key_in_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", "coordination:\n  cluster:\n    gossip_intervall: 1s\n")
    with pytest.raises(
        ConfigError,
        match=r"unknown key 'coordination.cluster.gossip_intervall' "
        r"\(did you mean 'coordination.cluster.gossip_interval'\?\)",
    ):
        load_config(path, env={})


def test_unknown_key_without_a_close_match(tmp_path: Path) -> None:
    path, message = load_error(tmp_path, "[runtime]\nzzz = 5\n")
    assert message == f"{path}: unknown key 'runtime.zzz'"


def test_wrong_type_names_file_and_key(tmp_path: Path) -> None:
    path, message = load_error(tmp_path, '[runtime]\nmax_agents = "many"\n')
    assert message == f"{path}: runtime.max_agents: expected an integer, got 'many'"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[runtime]\nexecution_timeout = "soon"\n',
            "runtime.execution_timeout: expected a duration",
        ),
        ('[runtime]\nwasm_memory_limit = "lots"\n', "runtime.wasm_memory_limit: expected a size"),
        ("[networking]\ntls_enabled = 3\n", "networking.tls_enabled: expected true or false"),
        ('[networking]\nbind_address = "8080"\n', "networking.bind_address: expected HOST:PORT"),
        ('[observability]\nlog_format = "xml"\n', "observability.log_format: expected one of"),
        ("[runtime]\nmax_agents = 0\n", "runtime.max_agents: must be at least 1"),
        ("[observability]\ntrace_sample_rate = 2\n", "trace_sample_rate: must be at most 1"),
        ('[security]\ncors_origins = "x"\n', None),  # a string is a one-item list
        ("[security]\ncors_origins = [1]\n", "security.cors_origins: expected a list of strings"),
        ('[node]\nlabels = "x"\n', "node.labels: expected a table"),
    ],
)
def test_type_errors(tmp_path: Path, text: str, expected: str | None) -> None:
    path = write(tmp_path, "c.toml", text)
    if expected is None:
        load_config(path, env={})
        return
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message


def test_wrong_type_from_the_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={"CAXTON_RUNTIME_MAX_AGENTS": "lots"})
    assert str(info.value) == (
        "environment CAXTON_RUNTIME_MAX_AGENTS: runtime.max_agents: expected an integer, got 'lots'"
    )


def test_wrong_type_from_a_flag() -> None:
    with pytest.raises(ConfigError, match=r"^flags: networking.bind_address: expected HOST:PORT"):
        load_config(env={}, overrides={"networking.bind_address": "nowhere"})


def test_unknown_flag_key() -> None:
    with pytest.raises(ConfigError, match=r"^flags: unknown config key 'nosuch.key'"):
        load_config(env={}, overrides={"nosuch.key": 1})


def test_unknown_section(tmp_path: Path) -> None:
    path, message = load_error(tmp_path, "[runtme]\nmax_agents = 5\n")
    assert message == (
        f"{path}: unknown section 'runtme' (key 'runtme.max_agents'); "
        "no installed plugin declares it"
    )


def test_table_of_an_uninstalled_plugin(tmp_path: Path) -> None:
    path, message = load_error(tmp_path, '[transport.quic]\ncongestion_control = "bbr"\n')
    assert message == (
        f"{path}: unknown section 'transport.quic'; no installed plugin named 'quic' "
        "declares it (is the plugin installed?)"
    )


def test_top_level_value_must_be_a_table(tmp_path: Path) -> None:
    path = write(tmp_path, "c.toml", "max_agents = 5\n")
    with pytest.raises(
        ConfigError, match=r"'max_agents' must be a table of keys, like \[max_agents\]"
    ):
        load_config(path, env={})


@pytest.mark.parametrize(
    ("name", "text", "kind"),
    [("bad.toml", "[runtime\nmax_agents = 1\n", "TOML"), ("bad.yaml", "runtime: [1, 2\n", "YAML")],
)
def test_syntax_errors_are_one_line(tmp_path: Path, name: str, text: str, kind: str) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert message.startswith(f"{path}: not valid {kind}: ")
    assert "\n" not in message


def test_yaml_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", "- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a table of sections at the top level"):
        load_config(path, env={})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file .*nope.toml: No such file"):
        load_config(tmp_path / "nope.toml", env={})


def test_empty_yaml_file_means_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", "")
    assert load_config(path, env={})["runtime"]["max_agents"] == 1000


# -- plugin sections ---------------------------------------------------------------

QUIC_SECTION = ConfigSection(
    "transport.quic",
    (
        Field("idle_timeout", "duration", "30s"),
        Field("max_concurrent_streams", "int", 100, minimum=1),
        Field("token", "str", None, secret=True, optional=True),
    ),
    owner="quic",
)


def test_plugin_section_declared_up_front(tmp_path: Path) -> None:
    path = write(tmp_path, "c.toml", '[transport.quic]\nidle_timeout = "120s"\n')
    config = load_config(path, env={}, extra_sections=[QUIC_SECTION])
    assert config["transport.quic"] == {
        "idle_timeout": 120.0,
        "max_concurrent_streams": 100,
        "token": None,
    }


def test_plugin_section_of_an_installed_plugin_is_validated_when_it_loads(tmp_path: Path) -> None:
    path = write(tmp_path, "c.toml", '[transport.quic]\nidle_timeout = "2m"\n')
    config = load_config(path, env={}, plugin_section_names=["quic"])
    assert config.unclaimed == {"transport.quic": {"idle_timeout": "2m"}}
    config.add_section(QUIC_SECTION)
    assert config["transport.quic"]["idle_timeout"] == 120.0
    assert config.unclaimed == {}


def test_plugin_section_errors_name_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "c.toml", "[transport.quic]\nmax_concurent_streams = 5\n")
    config = load_config(path, env={}, plugin_section_names=["quic"])
    with pytest.raises(ConfigError) as info:
        config.add_section(QUIC_SECTION)
    assert str(info.value) == (
        f"{path}: unknown key 'transport.quic.max_concurent_streams' "
        "(did you mean 'transport.quic.max_concurrent_streams'?)"
    )
    path = write(tmp_path, "d.toml", "[transport.quic]\nmax_concurrent_streams = 0\n")
    config = load_config(path, env={}, plugin_section_names=["quic"])
    with pytest.raises(
        ConfigError, match=r"transport.quic.max_concurrent_streams: must be at least"
    ):
        config.add_section(QUIC_SECTION)


def test_plugin_section_env_override_when_declared() -> None:
    env = {"CAXTON_TRANSPORT_QUIC_IDLE_TIMEOUT": "5s"}
    config = load_config(env=env, extra_sections=[QUIC_SECTION])
    assert config["transport.quic"]["idle_timeout"] == 5.0


def test_plugin_section_declared_later_takes_env_and_flags(tmp_path: Path) -> None:
    path = write(
        tmp_path, "c.toml", '[transport.quic]\nidle_timeout = "2m"\nmax_concurrent_streams = 7\n'
    )
    config = load_config(
        path,
        env={"CAXTON_TRANSPORT_QUIC_IDLE_TIMEOUT": "3m", "CAXTON_TRANSPORT_QUIC_TOKEN": "t0k"},
        overrides={"transport.quic.max_concurrent_streams": 9},
        plugin_section_names=["quic"],
    )
    config.add_section(QUIC_SECTION)
    assert config["transport.quic"] == {
        "idle_timeout": 180.0,
        "max_concurrent_streams": 9,
        "token": "t0k",
    }
    assert config.sources["transport.quic.idle_timeout"] == (
        "environment CAXTON_TRANSPORT_QUIC_IDLE_TIMEOUT"
    )
    assert config.sources["transport.quic.max_concurrent_streams"] == "flags"
    assert config.to_dict()["transport"]["quic"]["token"] == SECRET_MASK


def test_plugin_env_variable_with_a_typo(tmp_path: Path) -> None:
    config = load_config(
        env={"CAXTON_TRANSPORT_QUIC_IDLE_TIMOUT": "3m"}, plugin_section_names=["quic"]
    )
    with pytest.raises(ConfigError) as info:
        config.add_section(QUIC_SECTION)
    assert str(info.value) == (
        "environment: CAXTON_TRANSPORT_QUIC_IDLE_TIMOUT does not name a config key "
        "(did you mean CAXTON_TRANSPORT_QUIC_IDLE_TIMEOUT?)"
    )


def test_plugin_env_variable_without_the_plugin_installed() -> None:
    with pytest.raises(ConfigError, match=r"CAXTON_TRANSPORT_QUIC_IDLE_TIMEOUT does not name"):
        load_config(env={"CAXTON_TRANSPORT_QUIC_IDLE_TIMEOUT": "3m"})


def test_hyphenated_plugin_names_in_env_and_files(tmp_path: Path) -> None:
    section = ConfigSection(
        "placement.zone-aware", (Field("zone_key", "str", "zone"),), owner="zone-aware"
    )
    path = write(tmp_path, "c.yaml", "placement:\n  zone-aware:\n    zone_key: az\n")
    config = load_config(path, env={}, plugin_section_names=["zone-aware"])
    config.add_section(section)
    assert config["placement.zone-aware"]["zone_key"] == "az"
    env = {"CAXTON_PLACEMENT_ZONE_AWARE_ZONE_KEY": "rack"}
    config = load_config(path, env=env, plugin_section_names=["zone-aware"])
    config.add_section(section)
    assert config["placement.zone-aware"]["zone_key"] == "rack"


def test_top_level_plugin_section(tmp_path: Path) -> None:
    section = ConfigSection("audit", (Field("sink", "str", "stderr"),), owner="audit")
    path = write(tmp_path, "c.yaml", "audit:\n  sink: file\n")
    assert load_config(path, env={}, extra_sections=[section])["audit"]["sink"] == "file"
    with pytest.raises(ConfigError, match=r"unknown section 'audit'"):
        load_config(path, env={})


# -- output --------------------------------------------------------------------------


def test_secrets_are_masked(tmp_path: Path) -> None:
    config = load_config(
        env={"CAXTON_SECURITY_JWT_SECRET": "s3cret"}, extra_sections=[QUIC_SECTION]
    )
    shown = config.to_dict()
    assert shown["security"]["jwt_secret"] == SECRET_MASK
    assert config.to_dict(mask_secrets=False)["security"]["jwt_secret"] == "s3cret"
    assert "s3cret" not in repr(shown)
    assert shown["transport"]["quic"]["token"] is None  # unset secrets are shown as unset


def test_to_dict_nests_sections() -> None:
    data = load_config(env={}).to_dict()
    assert data["coordination"]["cluster"]["gossip_fanout"] == 3
    assert data["security"]["cluster"]["mtls"]["verify_peer"] is True


def test_get_reads_dotted_keys() -> None:
    config = load_config(env={})
    assert config.get("coordination.cluster.gossip_fanout") == 3
    assert config.get("plugins.auth") == ["api-key"]
