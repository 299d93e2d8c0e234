"""Configuration: typed sections, loaded from TOML or YAML, the environment and flags.

Precedence is flags > environment (``CAXTON_*``) > file > defaults. Every key belongs
to a declared :class:`ConfigSection`; core declares its own in :data:`CORE_SECTIONS`,
plugins declare theirs (a driver's ``config_section`` attribute, or the
``caxton_config_sections`` hook). A wrong type or unknown key is a :class:`ConfigError`
whose message is one line naming the key and the file.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from caxton.errors import ConfigError
from caxton.units import parse_address, parse_duration, parse_size

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

SECRET_MASK = "********"

# Names of CAXTON_* variables that are not config overrides.
NON_CONFIG_ENV = {
    "CAXTON_CONFIG_PATH",
    "CAXTON_API_URL",
    "CAXTON_TOKEN",
    "CAXTON_API_KEY",
    "CAXTON_DISABLED_PLUGINS",
    "CAXTON_PLUGINS_STRICT",
    # Test settings (caxton.testing, the SWIM seed sweep); a node started by such a
    # test inherits them.
    "CAXTON_EXAMPLES_DIR",
    "CAXTON_SWIM_SEED_BASE",
    "CAXTON_SWIM_SEED_SCALE",
}


# -------------------------------------------------------------------------
# Schema
# -------------------------------------------------------------------------


def _check_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _check_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            return int(value)
        raise ValueError(f"expected an integer, got {value!r}")
    return value


def _check_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise ValueError(f"expected a number, got {value!r}")


def _check_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"true", "1", "yes", "on"}:
        return True
    if isinstance(value, str) and value.lower() in {"false", "0", "no", "off"}:
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _check_list(value: Any) -> list[Any]:
    if isinstance(value, str):  # from the environment: comma-separated
        return [item.strip() for item in value.split(",") if item.strip()]
    if not isinstance(value, list):
        raise ValueError(f"expected a list, got {value!r}")
    return value


def _check_str_list(value: Any) -> list[str]:
    items = _check_list(value)
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"expected a list of strings, got {value!r}")
    return items


def _check_table(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a table, got {value!r}")
    return dict(value)


def _check_address(value: Any) -> str:
    parse_address(_check_str(value))
    return str(value)


def _check_any(value: Any) -> Any:
    return value


CHECKERS: dict[str, Callable[[Any], Any]] = {
    "str": _check_str,
    "int": _check_int,
    "float": _check_float,
    "bool": _check_bool,
    "duration": parse_duration,
    "size": parse_size,
    "address": _check_address,
    "list": _check_list,
    "list[str]": _check_str_list,
    "table": _check_table,
    "any": _check_any,
}


@dataclass(frozen=True)
class Field:
    """One config key.

    ``type`` is one of :data:`CHECKERS` (``duration`` values become seconds as float,
    ``size`` values bytes as int). ``default=None`` with ``optional=True`` means unset.
    """

    name: str
    type: str
    default: Any
    help: str = ""
    secret: bool = False
    optional: bool = False
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None

    def convert(self, value: Any) -> Any:
        if value is None and self.optional:
            return None
        converted = CHECKERS[self.type](value)
        if self.choices is not None and converted not in self.choices:
            allowed = ", ".join(repr(c) for c in self.choices)
            raise ValueError(f"expected one of {allowed}, got {value!r}")
        if self.minimum is not None and converted < self.minimum:
            raise ValueError(f"must be at least {self.minimum:g}, got {value!r}")
        if self.maximum is not None and converted > self.maximum:
            raise ValueError(f"must be at most {self.maximum:g}, got {value!r}")
        return converted


@dataclass(frozen=True)
class ConfigSection:
    """A table of the config file, by dotted path (``"coordination.cluster"``)."""

    path: str
    fields: tuple[Field, ...]
    help: str = ""
    #: Who declared it: ``"core"`` or a plugin name; shown in errors.
    owner: str = "core"
    #: Accept keys that are not declared (free-form tables such as ``partition.decisions``).
    allow_unknown: bool = False

    def field(self, name: str) -> Field | None:
        for f in self.fields:
            if f.name == name:
                return f
        return None

    def defaults(self) -> dict[str, Any]:
        return {f.name: f.default for f in self.fields}


# fmt: off
F = Field
CORE_SECTIONS: tuple[ConfigSection, ...] = (
    ConfigSection("node", (
        F("id", "str", "", "Node id; defaults to the host name", optional=True),
        F("data_dir", "str", "./caxton-data", "Directory for the state store and caches"),
        F("region", "str", "", "Region gossiped as node metadata"),
        F("zone", "str", "", "Zone gossiped as node metadata"),
        F("labels", "table", {}, "Labels gossiped as node metadata"),
    ), "This node"),
    ConfigSection("runtime", (
        F("max_agents", "int", 1000, "Agents this node will host", minimum=1),
        F("max_concurrent_executions", "int", 100, minimum=1),
        F("max_concurrent_messages", "int", 10000, minimum=1),
        F("agent_pool_size", "int", 4, "Pre-warmed instances per module", minimum=0),
        F("wasm_memory_limit", "size", "512MB", "Highest max_memory_bytes an agent may ask"),
        F("max_memory_per_agent", "size", "64MB", "Default max_memory_bytes", minimum=65536),
        F("wasm_stack_limit", "size", "1MB", "Wasm stack per instance", minimum=65536),
        F("agent_heap_size", "size", "0", "Informational: expected heap use"),
        F("agent_stack_size", "size", "512KB"),
        F("default_max_fuel", "int", 10_000_000, "Default fuel per delivery", minimum=1),
        F("max_fuel_limit", "int", 10_000_000_000, "Highest max_fuel an agent may ask"),
        F("default_execution_time", "duration", "5s", "Default wall-time per delivery"),
        F("execution_timeout", "duration", "30s", "Highest wall-time an agent may ask"),
        F("agent_idle_timeout", "duration", "300s"),
        F("max_message_size", "size", "1MB", minimum=256),
        F("module_cache", "bool", True, "Cache compiled modules on disk"),
        F("cpu_quota", "float", 0.0, "Informational CPU cores budget (0: all)"),
        F("memory_limit", "size", "0", "Node memory budget (0: unlimited)"),
        F("temp_storage_limit", "size", "0"),
        F("cpu_affinity", "bool", False),
        F("restart_policy", "str", "on-failure", choices=("never", "on-failure")),
        F("restart_max", "int", 5, "Restarts before an agent stays failed", minimum=0),
        F("restart_backoff", "duration", "100ms"),
        F("agent_startup_timeout", "duration", "10s", "Wall-time allowed for agent_init"),
        F("agent_shutdown_timeout", "duration", "5s", "Wall-time allowed for agent_shutdown"),
        F("gc_interval", "duration", "60s", "How often idle instances are reclaimed"),
        F("memory_pressure_threshold", "float", 0.8,
          "Fraction of memory_limit above which idle instances are reclaimed",
          minimum=0, maximum=1),
        F("agent_memory_reclaim", "bool", True, "Reclaim idle instances under pressure"),
    ), "Agent execution"),
    ConfigSection("networking", (
        F("bind_address", "address", "127.0.0.1:8080", "REST API address"),
        F("metrics_address", "address", "127.0.0.1:9090", "Prometheus metrics address"),
        F("admin_address", "address", "127.0.0.1:8081"),
        F("max_connections", "int", 10000, minimum=1),
        F("connection_timeout", "duration", "30s"),
        F("request_timeout", "duration", "60s"),
        F("keepalive_timeout", "duration", "60s"),
        F("max_body_size", "size", "16MB", minimum=1024),
        F("tls_enabled", "bool", False),
        F("tls_cert_path", "str", None, optional=True),
        F("tls_key_path", "str", None, optional=True),
        F("tls_ca_path", "str", None, optional=True),
    ), "The REST API and metrics listeners"),
    ConfigSection("api", (
        F("ui", "bool", True, "Serve the web console at /ui (docs/console.md)"),
    ), "The REST API's extras"),
    ConfigSection("coordination", (
        F("local_state_path", "str", None, "SQLite file (default: DATA_DIR/local.db)",
          optional=True),
        F("journal_mode", "str", "WAL", choices=("WAL", "DELETE", "TRUNCATE")),
        F("cluster_enabled", "bool", False),
        # The production guide writes these flat under [coordination]; they are aliases
        # of the same keys in [coordination.cluster].
        F("bind_addr", "address", None, optional=True),
        F("advertise_addr", "str", None, optional=True),
        F("seeds", "list[str]", None, optional=True),
        F("gossip_interval", "duration", None, optional=True),
        F("probe_interval", "duration", None, optional=True),
    ), "Local state and clustering"),
    ConfigSection("coordination.cluster", (
        F("bind_addr", "address", "127.0.0.1:7946", "Gossip/transport address"),
        F("advertise_addr", "str", "auto", "Address peers use to reach this node"),
        F("seeds", "list[str]", [], "HOST:PORT of nodes to join"),
        F("gossip_interval", "duration", "200ms"),
        F("gossip_fanout", "int", 3, minimum=1),
        F("probe_interval", "duration", "1s"),
        F("probe_timeout", "duration", "500ms"),
        F("indirect_probes", "int", 3, minimum=0),
        F("suspicion_multiplier", "int", 4, minimum=1),
        F("gossip_to_dead", "int", 3, "Gossip rounds that still include dead nodes",
          minimum=0),
        F("push_pull_interval", "duration", "30s"),
        F("bootstrap_expect", "int", 0, minimum=0),
        F("discovery", "str", "static", "How seeds are found: static (seeds) or dns",
          choices=("static", "dns")),
        F("dns_name", "str", None, "DNS name whose records are the seeds (discovery = dns)",
          optional=True),
        F("dns_port", "int", None, "Seed port for A/AAAA records (default: bind_addr's)",
          optional=True, minimum=1),
        F("dns_server", "address", None, "DNS server (default: /etc/resolv.conf)",
          optional=True),
        F("dns_interval", "duration", "5s", "Resolve again this often while alone"),
        F("regions", "list", []),
        F("cross_region", "table", {}),
        F("failover", "bool", True, "Restart a failed node's agents on a survivor"),
        F("replicas", "int", 2, "Peers keeping each agent's module and spec", minimum=0),
        F("replica_max_size", "size", "8MB", "Largest module replicated to peers",
          minimum=0),
        F("durability", "str", "quorum",
          "When an agent's reply may follow a state change: quorum, async or local",
          choices=("quorum", "async", "local")),
        F("rebalance", "str", "off",
          "Move agents to a node that joins or comes back: off or on-join (rate-limited)",
          choices=("off", "on-join")),
        F("rebalance_interval", "duration", "60s",
          "With rebalance = on-join: at most one automatic rebalance this often"),
        F("drain_on_stop", "duration", "0s",
          "On a stop (SIGTERM): move the agents to other nodes for up to this long first"),
    ), "SWIM membership"),
    ConfigSection("partition", (
        F("strategy", "str", None, "Partition policy driver (alias of plugins.partition_policy)",
          optional=True),
        F("detection_timeout", "duration", "5s",
          "Quorum lease: read-write only while a majority answered within it"),
        F("lease_drift_margin", "duration", None,
          "Added to detection_timeout before a failover (default: a tenth of it)",
          optional=True),
        F("quorum_size", "int", None, optional=True, minimum=1),
        F("degraded_mode", "bool", True),
        F("queue_writes", "bool", True),
        F("max_queued_writes", "int", 100_000, minimum=0),
        F("custom_handler", "str", None, optional=True),
        F("decisions", "list", []),
    ), "Network partition handling"),
    ConfigSection("messaging", (
        F("queue_size", "int", 10_000, "Per-agent queue bound", minimum=1),
        F("batch_size", "int", 64, minimum=1),
        F("delivery_timeout", "duration", "5s"),
        F("enable_persistence", "bool", False, "At-least-once delivery through SQLite"),
        F("delivery_guarantee", "str", "at-most-once",
          choices=("at-most-once", "at-least-once")),
        F("parallel_routes", "int", 1, minimum=1),
        F("worker_threads", "int", 1, "Threads for heavy agents' calls (0: all inline)",
          minimum=0),
        F("priority_routing", "any", True),
        F("message_ttl", "duration", "60s"),
        F("cleanup_interval", "duration", "10s"),
        F("enable_compression", "bool", False),
        F("dead_letter_limit", "int", 10_000, minimum=0),
    ), "Message routing"),
    ConfigSection("transport", (
        F("type", "str", None, "Transport driver (alias of plugins.transport)", optional=True),
        F("max_streams", "int", None, optional=True),
        F("congestion_control", "str", None, optional=True),
        F("idle_timeout", "duration", None, optional=True),
        F("max_concurrent_streams", "int", None, optional=True),
        F("max_frame_size", "size", "16MB", minimum=1024),
        F("connect_timeout", "duration", "5s"),
        F("plaintext", "bool", False, "Unencrypted node traffic (local development only)"),
        F("connection_pool", "table", {}),
    ), "Node-to-node transport"),
    ConfigSection("storage", (
        F("type", "str", "sqlite", choices=("sqlite",)),
        F("page_cache_size", "size", "64MB"),
        F("wal_size_limit", "size", "64MB"),
        F("mmap_size", "size", "256MB"),
        F("auto_vacuum", "str", "incremental", choices=("none", "full", "incremental")),
        F("synchronous", "str", "NORMAL", choices=("OFF", "NORMAL", "FULL")),
    ), "The embedded SQLite store"),
    ConfigSection("observability", (
        F("log_level", "str", "info",
          choices=("trace", "debug", "info", "warning", "warn", "error", "critical")),
        F("log_format", "str", "text", choices=("text", "json")),
        F("log_file", "str", None, optional=True),
        F("log_rotation", "str", "daily", choices=("daily", "hourly", "size", "none")),
        F("log_max_bytes", "size", "100MB",
          "With log_file: rotate when the file reaches this size (0: never by size)"),
        F("log_backups", "int", 10, "Rotated log files kept", minimum=0),
        F("log_retention_days", "int", 30, minimum=0),
        F("enable_metrics", "bool", True),
        F("metrics_prefix", "str", "caxton"),
        F("legacy_metric_names", "bool", True,
          "Also export the product documents' two gauges in milliseconds "
          "(caxton_cluster_gossip_latency_ms, caxton_cluster_convergence_time_ms), "
          "which Prometheus naming (promtool check metrics) rejects"),
        F("histogram_buckets", "list", [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05,
                                        0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
          "Upper bounds (seconds) of every latency histogram's buckets"),
        F("enable_tracing", "bool", False),
        F("trace_sample_rate", "float", 0.1, minimum=0, maximum=1),
        F("otlp_endpoint", "str", None, optional=True),
        F("otlp_timeout", "duration", "10s"),
    ), "Logs, metrics and traces"),
    ConfigSection("security", (
        F("auth_enabled", "bool", False),
        F("allow_insecure_remote", "bool", False,
          "Allow binding the API to a non-loopback address without auth"),
        F("jwt_secret", "str", None, secret=True, optional=True),
        F("jwt_expiry", "duration", "1h"),
        F("api_key_header", "str", "X-API-Key"),
        F("rate_limit_enabled", "bool", False),
        F("rate_limit_per_second", "float", 100, minimum=0),
        F("rate_limit_burst", "int", 200, minimum=1),
        F("cors_enabled", "bool", False),
        F("cors_origins", "list[str]", []),
        F("cors_methods", "list[str]", ["GET", "POST", "PUT", "DELETE"]),
        F("roles", "table", {}, "role -> list of permissions (overrides the defaults)"),
    ), "API security"),
    ConfigSection("security.cluster", (
        F("gossip_keys", "list[str]", [], "Base64 AES-GCM keys; the first encrypts",
          secret=True),
    ), "Cluster security"),
    ConfigSection("security.cluster.mtls", (
        F("enabled", "bool", False),
        F("ca_cert", "str", None, optional=True),
        F("node_cert", "str", None, optional=True),
        F("node_key", "str", None, optional=True, secret=True),
        F("verify_peer", "bool", True),
    ), "Mutual TLS between nodes"),
    ConfigSection("security.cluster.enrolment", (
        F("cert_lifetime", "duration", "90d",
          "Life of the node certificates the cluster CA signs (bootstrap, join, renewal)",
          minimum=1),
        F("renew_before", "duration", None,
          "Renew a certificate of the data directory once less than this is left "
          "(default: a third of its life)", optional=True, minimum=1),
    ), "Certificates made by the cluster CA in the data directory (join tokens)"),
    ConfigSection("security.audit", (
        F("enabled", "bool", True, "Write the audit log (when security.auth_enabled)"),
        F("path", "str", None, "Audit log file (default: DATA_DIR/audit.log)", optional=True),
        F("max_size", "size", "10MB", "Rotate past this size", minimum=1024),
        F("backups", "int", 5, "Rotated files kept", minimum=0),
    ), "The audit log (docs/auth.md)"),
    ConfigSection("security.agent_policy", (
        F("allowed_senders", "table", {},
          "agent name or pattern -> senders (names or patterns) allowed to message it"),
    ), "Who may message which agent (docs/auth.md)"),
    ConfigSection("agents", (
        F("default_limits", "table", {}),
        F("overrides", "list", []),
    ), "Per-agent limit defaults and overrides"),
    ConfigSection("backup", (
        F("dir", "str", None, "Backup directory (default: DATA_DIR/backups)", optional=True),
        F("schedule", "duration", None, "Make a backup every interval, e.g. 6h (unset: never)",
          optional=True),
        F("retention", "int", 7, "Scheduled backups kept, here and at dest", minimum=1),
        F("dest", "str", None, "Also copy scheduled backups to a directory or s3://BUCKET/PREFIX",
          optional=True),
        F("type", "str", "full", "What scheduled backups hold", choices=("full", "state")),
        F("before_migrations", "bool", True,
          "Back up the state store before a schema migration changes it"),
    ), "Backups (docs/operations.md)"),
    ConfigSection("plugins", (
        F("sandbox", "str", "wasmtime"),
        F("transport", "str", "tcp"),
        F("membership", "str", "swim"),
        F("placement", "str", "least-loaded"),
        F("partition_policy", "str", "quorum"),
        F("auth", "list[str]", ["api-key"], "Auth chain, in order"),
        F("disabled", "list[str]", [], "Plugins blocked without uninstalling them"),
        F("modules", "list[str]", [], "Importable modules registered as hook plugins"),
        F("strict", "bool", False, "A plugin that fails to load stops the node"),
    ), "Plugin selection"),
)
del F
# fmt: on

#: Keys from the product documents that live in another section.
ALIASES: dict[str, str] = {
    "coordination.bind_addr": "coordination.cluster.bind_addr",
    "coordination.advertise_addr": "coordination.cluster.advertise_addr",
    "coordination.seeds": "coordination.cluster.seeds",
    "coordination.gossip_interval": "coordination.cluster.gossip_interval",
    "coordination.probe_interval": "coordination.cluster.probe_interval",
    "transport.type": "plugins.transport",
    "partition.strategy": "plugins.partition_policy",
}

#: Tables from the product documents that live elsewhere.
SECTION_ALIASES = {"coordination.partition": "partition"}

#: Environment variable names from the product documents.
ENV_ALIASES = {
    "CAXTON_LOG_LEVEL": "observability.log_level",
    "CAXTON_METRICS_ENABLED": "observability.enable_metrics",
}


# -------------------------------------------------------------------------
# The effective configuration
# -------------------------------------------------------------------------


@dataclass
class Config:
    """Validated configuration: ``config["runtime"]["max_agents"]`` or ``config.get(...)``."""

    sections: dict[str, ConfigSection]
    values: dict[str, dict[str, Any]]
    #: dotted key -> where its value came from ("default", a file path, "env CAXTON_X", "flag")
    sources: dict[str, str] = field(default_factory=dict)
    #: Undeclared tables from the file, kept for plugins that are installed but not loaded.
    unclaimed: dict[str, dict[str, Any]] = field(default_factory=dict)
    path: Path | None = None
    #: ``CAXTON_*`` variables and flag keys naming an installed plugin's section, kept
    #: until the plugin declares it (:meth:`add_section`).
    pending_env: dict[str, str] = field(default_factory=dict)
    pending_flags: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, section: str) -> dict[str, Any]:
        if section in self.values:
            return self.values[section]
        return self.unclaimed.get(section, {})

    def get(self, dotted: str) -> Any:
        section, _, key = dotted.rpartition(".")
        return self[section].get(key)

    def add_section(self, section: ConfigSection) -> None:
        """Validate a plugin's section (declared after loading) against the raw values.

        The same precedence applies as for core sections: flags, then ``CAXTON_*``
        variables, then the file's table, then the section's defaults.
        """
        if section.path in self.values:
            return
        self.sections[section.path] = section
        values: dict[str, Any] = {}
        for f in section.fields:
            values[f.name] = _convert(section, f.name, f.default, "default")
            self.sources[f"{section.path}.{f.name}"] = "default"
        file_origin = self.sources.get(section.path, str(self.path) if self.path else "defaults")
        layers: list[tuple[str, Mapping[str, Any]]] = [
            (file_origin, self.unclaimed.pop(section.path, {})),
            *self._pending_env_of(section),
            ("flags", self._pending_flags_of(section)),
        ]
        for origin, raw in layers:
            for key, value in raw.items():
                values[key] = _convert(section, key, value, origin)
                self.sources[f"{section.path}.{key}"] = origin
        self.values[section.path] = values

    def _pending_env_of(self, section: ConfigSection) -> list[tuple[str, dict[str, Any]]]:
        prefix = env_name(section.path) + "_"
        layers = []
        for name in sorted(n for n in self.pending_env if n.startswith(prefix)):
            key = name[len(prefix) :].lower()
            if section.field(key) is None:
                names = [env_name(f"{section.path}.{f.name}") for f in section.fields]
                close = difflib.get_close_matches(name, names, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise ConfigError(f"environment: {name} does not name a config key{hint}")
            layers.append((f"environment {name}", {key: self.pending_env.pop(name)}))
        return layers

    def _pending_flags_of(self, section: ConfigSection) -> dict[str, Any]:
        prefix = section.path + "."
        found = {}
        for dotted in [d for d in self.pending_flags if d.startswith(prefix)]:
            found[dotted[len(prefix) :]] = self.pending_flags.pop(dotted)
        return found

    def to_dict(self, *, mask_secrets: bool = True) -> dict[str, Any]:
        """Nested plain data, as a config file would hold it."""
        out: dict[str, Any] = {}
        for path in sorted(self.values):
            section = self.sections[path]
            node = out
            for part in path.split("."):
                node = node.setdefault(part, {})
            for key, value in self.values[path].items():
                f = section.field(key)
                if mask_secrets and f is not None and f.secret and value:
                    value = SECRET_MASK
                node[key] = value
        return out


def _convert(section: ConfigSection, key: str, value: Any, origin: str) -> Any:
    f = section.field(key)
    dotted = f"{section.path}.{key}"
    if f is None:
        if section.allow_unknown:
            return value
        names = [f.name for f in section.fields]
        close = difflib.get_close_matches(key, names, n=1)
        hint = f" (did you mean '{section.path}.{close[0]}'?)" if close else ""
        raise ConfigError(f"{origin}: unknown key '{dotted}'{hint}")
    try:
        return f.convert(value)
    except ValueError as exc:
        raise ConfigError(f"{origin}: {dotted}: {exc}") from None


# -------------------------------------------------------------------------
# Loading
# -------------------------------------------------------------------------

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def read_file(path: Path) -> dict[str, Any]:
    """Parse a TOML or YAML file into a mapping (by extension; TOML if unknown)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        if path.suffix.lower() in {".yaml", ".yml"}:
            data = yaml.safe_load(text) or {}
        else:
            data = tomllib.loads(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise ConfigError(f"{path}: not valid {_format_name(path)}: {first_line}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table of sections at the top level")
    return data


def _format_name(path: Path) -> str:
    return "YAML" if path.suffix.lower() in {".yaml", ".yml"} else "TOML"


def _substitute(value: Any, env: Mapping[str, str], where: str) -> Any:
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(f"{where}: environment variable ${{{name}}} is not set")

        return _ENV_REF.sub(replace, value)
    if isinstance(value, list):
        return [_substitute(item, env, where) for item in value]
    if isinstance(value, dict):
        return {k: _substitute(v, env, f"{where}.{k}") for k, v in value.items()}
    return value


def _flatten(
    data: Mapping[str, Any],
    sections: Mapping[str, ConfigSection],
    plugins: set[str],
    prefix: str = "",
) -> Iterable[tuple[str, str, Any]]:
    """Yield (section_path, key, value) for a nested mapping of sections."""
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        path = SECTION_ALIASES.get(path, path)
        if isinstance(value, Mapping) and _is_section_prefix(path, sections, plugins):
            yield from _flatten(value, sections, plugins, path)
        else:
            yield prefix, str(key), value


def _is_section_prefix(path: str, sections: Mapping[str, ConfigSection], plugins: set[str]) -> bool:
    if path in sections or "." not in path:
        return True
    if any(s.startswith(path + ".") for s in sections):
        return True
    return path.rpartition(".")[2] in plugins


#: Read when neither ``--config`` nor ``$CAXTON_CONFIG_PATH`` names a file: the first
#: that exists, as a packaged service (systemd unit, container) expects.
SYSTEM_CONFIG_FILES = (
    Path("/etc/caxton/config.toml"),
    Path("/etc/caxton/config.yaml"),
    Path("/etc/caxton/config.yml"),
)


def system_config_file() -> Path | None:
    """The first of :data:`SYSTEM_CONFIG_FILES` that exists, or None."""
    return next((path for path in SYSTEM_CONFIG_FILES if path.is_file()), None)


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    extra_sections: Iterable[ConfigSection] = (),
    plugin_section_names: Iterable[str] = (),
) -> Config:
    """Build the effective configuration.

    ``path`` defaults to ``$CAXTON_CONFIG_PATH``, then to :func:`system_config_file`;
    ``overrides`` are dotted keys from flags. ``plugin_section_names`` names installed
    plugins whose sections may appear in the file before those plugins load
    (``transport.quic`` when ``quic`` is installed).
    """
    env = os.environ if env is None else env
    sections = {s.path: s for s in (*CORE_SECTIONS, *extra_sections)}
    known_plugins = set(plugin_section_names)
    if path is None and env.get("CAXTON_CONFIG_PATH"):
        path = env["CAXTON_CONFIG_PATH"]
    file_path = Path(path) if path is not None else system_config_file()

    # Collect raw values: (section, key) -> (value, origin)
    raw: dict[tuple[str, str], tuple[Any, str]] = {}
    unclaimed: dict[str, dict[str, Any]] = {}
    origins: dict[str, str] = {}
    pending_env: dict[str, str] = {}
    pending_flags: dict[str, Any] = {}
    if file_path is not None:
        data = _substitute(read_file(file_path), env, str(file_path))
        origin = str(file_path)
        for section_path, key, value in _flatten(data, sections, known_plugins):
            dotted = f"{section_path}.{key}" if section_path else key
            if (
                section_path in sections
                and isinstance(value, Mapping)
                and sections[section_path].field(key) is None
                and not sections[section_path].allow_unknown
            ):
                raise ConfigError(
                    f"{origin}: unknown section '{dotted}'; no installed plugin named "
                    f"'{key}' declares it (is the plugin installed?)"
                )
            if section_path in sections:
                canonical = ALIASES.get(dotted, dotted)
                target, _, target_key = canonical.rpartition(".")
                if canonical != dotted and (target, target_key) in raw:
                    continue  # the canonical spelling was given too and wins
                raw[(target, target_key)] = (value, origin)
            elif _claimed_by_plugin(section_path, known_plugins):
                unclaimed.setdefault(section_path, {})[key] = value
                origins[section_path] = origin
            elif not section_path:
                raise ConfigError(f"{origin}: '{key}' must be a table of keys, like [{key}]")
            else:
                raise ConfigError(
                    f"{origin}: unknown section '{section_path}' (key '{dotted}'); "
                    f"no installed plugin declares it"
                )

    for name, value in env.items():
        if not name.startswith("CAXTON_") or name in NON_CONFIG_ENV:
            continue
        env_key = ENV_ALIASES.get(name) or _env_to_key(name, sections)
        if env_key is None and _env_names_plugin(name, known_plugins):
            pending_env[name] = value  # for a plugin section declared when it loads
            continue
        if env_key is None:
            raise ConfigError(
                f"environment: {name} does not name a config key{_env_hint(name, sections)}"
            )
        dotted = ALIASES.get(env_key, env_key)
        section_path, _, key = dotted.rpartition(".")
        raw[(section_path, key)] = (value, f"environment {name}")

    for dotted, value in (overrides or {}).items():
        dotted = ALIASES.get(dotted, dotted)
        section_path, _, key = dotted.rpartition(".")
        if section_path not in sections and _claimed_by_plugin(section_path, known_plugins):
            pending_flags[dotted] = value
            continue
        if section_path not in sections:
            raise ConfigError(f"flags: unknown config key '{dotted}'")
        raw[(section_path, key)] = (value, "flags")

    values: dict[str, dict[str, Any]] = {}
    sources: dict[str, str] = dict(origins)
    for section_path, section in sections.items():
        converted = {}
        for f in section.fields:
            converted[f.name] = _convert(section, f.name, f.default, "defaults")
            sources[f"{section_path}.{f.name}"] = "default"
        values[section_path] = converted
    for (section_path, key), (value, origin) in raw.items():
        values[section_path][key] = _convert(sections[section_path], key, value, origin)
        sources[f"{section_path}.{key}"] = origin

    # Flat [coordination] aliases fill the canonical keys (already mapped above); drop
    # the alias copies so each value has one home.
    for dotted in ALIASES:
        section_path, _, key = dotted.rpartition(".")
        if section_path in values and key in values[section_path]:
            del values[section_path][key]
    _check_discovery(values["coordination.cluster"], sources)
    return Config(
        sections,
        values,
        sources,
        unclaimed,
        file_path,
        pending_env=pending_env,
        pending_flags=pending_flags,
    )


def _check_discovery(cluster: Mapping[str, Any], sources: Mapping[str, str]) -> None:
    if cluster["discovery"] == "dns" and not cluster["dns_name"]:
        raise ConfigError(
            f"{sources['coordination.cluster.discovery']}: coordination.cluster.discovery = "
            f"'dns' needs coordination.cluster.dns_name (a headless Service's name for its A "
            f"records, or _PORT._tcp.NAME for SRV records)"
        )


def _env_names_plugin(name: str, plugin_names: set[str]) -> bool:
    """Whether ``CAXTON_TRANSPORT_QUIC_X`` mentions an installed plugin (``quic``)."""
    words = f"_{name[len('CAXTON_') :].lower()}_"
    return any(f"_{plugin.replace('-', '_').lower()}_" in words for plugin in plugin_names)


def _claimed_by_plugin(section_path: str, plugin_names: set[str]) -> bool:
    parts = section_path.split(".")
    return any(part in plugin_names for part in parts)


def env_name(dotted: str) -> str:
    """The ``CAXTON_*`` variable that overrides ``dotted`` (``runtime.max_agents``)."""
    return "CAXTON_" + dotted.replace(".", "_").replace("-", "_").upper()


def _env_hint(name: str, sections: Mapping[str, ConfigSection]) -> str:
    candidates = [*ENV_ALIASES, *NON_CONFIG_ENV]
    for path, section in sections.items():
        candidates += [env_name(f"{path}.{f.name}") for f in section.fields]
    close = difflib.get_close_matches(name, candidates, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _env_to_key(name: str, sections: Mapping[str, ConfigSection]) -> str | None:
    wanted = name[len("CAXTON_") :].lower()
    for path, section in sections.items():
        prefix = path.replace(".", "_") + "_"
        if wanted.startswith(prefix):
            key = wanted[len(prefix) :]
            if section.field(key) is not None:
                return f"{path}.{key}"
    return None
