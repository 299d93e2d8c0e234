"""Config keys that are accepted and do nothing yet, and what to use instead.

The product documents' config files must load, so their keys are declared in
:mod:`caxton.config`; the ones no part of Caxton acts on are listed here. ``caxton
config validate`` and ``caxton server start`` warn about each one that a config sets
(``config validate --strict`` refuses them). Whoever makes one of these keys work
removes its line in the same commit.
"""

from __future__ import annotations

from caxton.config import Config

__all__ = ["INERT_KEYS", "inert_key_warnings"]

_NOTHING = "nothing does this yet; leave the key out"
_LIMITS = (
    "per-agent limits are runtime.max_memory_per_agent, runtime.default_max_fuel and "
    "runtime.default_execution_time, or the deploy request's limits"
)
_PARTITION = "a caxton_partition_decision hook plugin (docs/cluster.md)"

#: dotted key -> what to use instead.
INERT_KEYS: dict[str, str] = {
    "runtime.max_concurrent_executions": (
        "agents run one delivery at a time on the node's event loop; bound the node with "
        "runtime.max_agents"
    ),
    "runtime.max_concurrent_messages": "messaging.queue_size bounds each agent's queue",
    "runtime.agent_heap_size": "runtime.max_memory_per_agent (an agent's memory limit)",
    "runtime.agent_stack_size": "runtime.wasm_stack_limit",
    "runtime.agent_idle_timeout": _NOTHING,
    "runtime.cpu_quota": (
        "runtime.default_max_fuel and runtime.default_execution_time bound each delivery; "
        "the node's own CPU with systemd CPUQuota= or a container limit"
    ),
    "runtime.memory_limit": (
        "runtime.max_memory_per_agent and runtime.max_agents; the node's own memory with "
        "systemd MemoryMax= or a container limit"
    ),
    "runtime.temp_storage_limit": "agents have no file system; leave the key out",
    "runtime.cpu_affinity": "systemd CPUAffinity= or taskset for the node process",
    "runtime.agent_startup_timeout": (
        "agent_init runs under the agent's own limits (runtime.default_execution_time)"
    ),
    "runtime.agent_shutdown_timeout": (
        "agent_shutdown runs under the agent's own limits (runtime.default_execution_time)"
    ),
    "runtime.gc_interval": _NOTHING,
    "runtime.memory_pressure_threshold": _NOTHING,
    "runtime.agent_memory_reclaim": _NOTHING,
    "networking.admin_address": "the admin routes are served on networking.bind_address",
    "networking.tls_ca_path": (
        "API clients authenticate with API keys or tokens (security.auth_enabled)"
    ),
    "coordination.cluster.regions": "node.region and node.zone (gossiped to placement)",
    "coordination.cluster.cross_region": "node.region and node.zone (gossiped to placement)",
    "partition.custom_handler": _PARTITION,
    "partition.decisions": _PARTITION,
    "messaging.delivery_timeout": "messaging.message_ttl",
    "messaging.parallel_routes": "one router per node; leave the key out",
    "transport.max_streams": "[transport.quic] max_concurrent_streams",
    "transport.congestion_control": "[transport.quic] congestion_control (reno or cubic)",
    "transport.idle_timeout": "[transport.quic] idle_timeout",
    "transport.max_concurrent_streams": "[transport.quic] max_concurrent_streams",
    "transport.connection_pool": _NOTHING,
    "transport.quic.enable_0rtt": (
        "not supported: aioquic's resumption skips client authentication"
    ),
    "agents.default_limits": _LIMITS,
    "agents.overrides": _LIMITS,
}


def inert_key_warnings(config: Config) -> list[str]:
    """One line for each key of :data:`INERT_KEYS` that ``config`` sets (not a default)."""
    warnings = []
    for dotted, instead in INERT_KEYS.items():
        origin = config.sources.get(dotted)
        if origin is None or origin == "default":
            continue
        warnings.append(f"{dotted} (set in {origin}) does nothing: {instead}")
    return warnings
