"""The agent record: identity, module, limits, capabilities, state, policy, counters."""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from caxton.drivers.sandbox import ResourceLimits, WasiCapabilities
from caxton.errors import ValidationError

MAX_NAME_LENGTH = 64
RESTART_POLICIES = ("never", "on-failure")


class AgentState(str, enum.Enum):
    """Lifecycle states; docs/agents.md has the transition table."""

    LOADED = "loaded"
    READY = "ready"
    RUNNING = "running"
    DRAINING = "draining"
    SUSPENDED = "suspended"
    STOPPED = "stopped"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


#: Agent priority classes, lowest first: in an emergency the low ones are suspended or
#: shed first (caxton.emergency).
PRIORITIES = ("low", "normal", "high", "critical")


@dataclass
class RestartPolicy:
    """What happens when a delivery fails (trap, fuel, timeout, memory).

    ``on-failure`` re-instantiates the agent after ``backoff * 2**(n-1)`` seconds
    (capped at ``max_backoff``) for the n-th consecutive failure, up to ``max_restarts``
    consecutive failures; one successful delivery resets the streak. ``never`` moves
    the agent to ``failed`` at its first failure.
    """

    policy: str = "on-failure"
    max_restarts: int = 5
    backoff: float = 0.1
    max_backoff: float = 30.0

    def __post_init__(self) -> None:
        if self.policy not in RESTART_POLICIES:
            raise ValidationError(
                f"restart policy must be one of {', '.join(RESTART_POLICIES)}, not {self.policy!r}"
            )
        if self.max_restarts < 0 or self.backoff < 0 or self.max_backoff < 0:
            raise ValidationError("restart max_restarts, backoff and max_backoff must be >= 0")

    def delay(self, streak: int) -> float:
        return float(min(self.max_backoff, self.backoff * 2 ** max(0, streak - 1)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], default: RestartPolicy) -> RestartPolicy:
        known = {f.name for f in dataclasses.fields(cls)}
        return dataclasses.replace(default, **{k: v for k, v in data.items() if k in known})


@dataclass(slots=True)
class AgentCounters:
    """Cumulative per-agent counters (kept across restarts of the node)."""

    messages_handled: int = 0
    timers_fired: int = 0
    crashes: int = 0
    traps: int = 0
    fuel_exhausted: int = 0
    timeouts: int = 0
    memory_exceeded: int = 0
    fuel_used: int = 0
    restarts: int = 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AgentCounters:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: int(v) for k, v in data.items() if k in known})


@dataclass(eq=False)
class Agent:
    """One deployed agent. ``to_dict()`` is what the REST API returns."""

    id: str
    name: str
    module_sha256: str
    limits: ResourceLimits
    capabilities: WasiCapabilities = field(default_factory=WasiCapabilities)
    state: AgentState = AgentState.LOADED
    restart_policy: RestartPolicy = field(default_factory=RestartPolicy)
    counters: AgentCounters = field(default_factory=AgentCounters)
    last_error: str | None = None
    node_id: str = ""
    #: Priority class (caxton.emergency.PRIORITIES): who is suspended or shed first.
    priority: str = "normal"
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state.value,
            "node_id": self.node_id,
            "module_sha256": self.module_sha256,
            "limits": dataclasses.asdict(self.limits),
            "capabilities": capabilities_to_dict(self.capabilities),
            "restart_policy": dataclasses.asdict(self.restart_policy),
            "counters": dataclasses.asdict(self.counters),
            "last_error": self.last_error,
            "priority": self.priority,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }

    def to_row(self) -> dict[str, Any]:
        """The store's row (JSON columns as dicts); see :class:`caxton.store.StoredAgent`."""
        data = self.to_dict()
        del data["node_id"]
        return data

    @classmethod
    def from_row(
        cls, row: Mapping[str, Any], *, node_id: str, default_policy: RestartPolicy
    ) -> Agent:
        return cls(
            id=row["id"],
            name=row["name"],
            module_sha256=row["module_sha256"],
            limits=_known(ResourceLimits, row["limits"]),
            capabilities=capabilities_from_mapping(row["capabilities"]),
            state=AgentState(row["state"]),
            restart_policy=RestartPolicy.from_dict(row["restart_policy"], default_policy),
            counters=AgentCounters.from_dict(row["counters"]),
            last_error=row["last_error"],
            priority=row.get("priority") or "normal",
            node_id=node_id,
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    def __repr__(self) -> str:
        return f"<Agent {self.name} {self.id} {self.state.value}>"


def _known(cls: type[ResourceLimits], data: Mapping[str, Any]) -> ResourceLimits:
    """Build ``cls`` from stored data, ignoring fields this version does not know."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def validate_name(name: object) -> str:
    """Trim and check an agent name: 1-64 characters, no control characters."""
    if not isinstance(name, str):
        raise ValidationError(f"agent name must be a string, not {type(name).__name__}")
    trimmed = name.strip()
    if not trimmed:
        raise ValidationError("agent name must not be empty: give a name of 1-64 characters")
    if len(trimmed) > MAX_NAME_LENGTH:
        raise ValidationError(
            f"agent name is {len(trimmed)} characters long; the limit is {MAX_NAME_LENGTH}"
        )
    if not trimmed.isprintable():
        raise ValidationError(f"agent name {trimmed!r} contains control characters")
    return trimmed


def validate_limits(
    limits: ResourceLimits | Mapping[str, Any] | None,
    *,
    default: ResourceLimits,
    ceiling: ResourceLimits,
) -> ResourceLimits:
    """Merge ``limits`` over ``default``; each must be a positive int within ``ceiling``."""
    if limits is None:
        values = dataclasses.asdict(default)
    elif isinstance(limits, ResourceLimits):
        values = dataclasses.asdict(limits)
    elif isinstance(limits, Mapping):
        values = dataclasses.asdict(default)
        unknown = sorted(set(limits) - set(values))
        if unknown:
            raise ValidationError(
                f"unknown resource limit {', '.join(map(repr, unknown))}; known limits: "
                f"{', '.join(values)}"
            )
        values.update(limits)
    else:
        raise ValidationError(f"limits must be an object, not {type(limits).__name__}")
    ceilings = dataclasses.asdict(ceiling)
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError(f"limit {key} must be an integer, not {value!r}")
        if value <= 0:
            raise ValidationError(f"limit {key} must be greater than 0, got {value}")
        if value > ceilings[key]:
            raise ValidationError(
                f"limit {key}={value} exceeds this node's ceiling of {ceilings[key]}; "
                f"ask for at most {ceilings[key]} or raise the node's limit"
            )
    return ResourceLimits(**values)


def capabilities_to_dict(capabilities: WasiCapabilities) -> dict[str, Any]:
    data = dataclasses.asdict(capabilities)
    data["args"] = list(capabilities.args)
    return data


def capabilities_from_mapping(
    capabilities: WasiCapabilities | Mapping[str, Any] | None,
) -> WasiCapabilities:
    """Accept ``WasiCapabilities`` or its JSON form (``{"enabled": true, ...}``)."""
    if capabilities is None:
        return WasiCapabilities()
    if isinstance(capabilities, WasiCapabilities):
        return capabilities
    if not isinstance(capabilities, Mapping):
        raise ValidationError(f"capabilities must be an object, not {type(capabilities).__name__}")
    known = {f.name for f in dataclasses.fields(WasiCapabilities)}
    unknown = sorted(set(capabilities) - known)
    if unknown:
        raise ValidationError(
            f"unknown capability {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}"
        )
    try:
        data = dict(capabilities)
        for flag in ("enabled", "stdio"):
            if flag in data and not isinstance(data[flag], bool):
                raise TypeError(f"{flag} must be true or false")
        if "preopen_dirs" in data:
            data["preopen_dirs"] = {str(k): str(v) for k, v in dict(data["preopen_dirs"]).items()}
        if "env" in data:
            data["env"] = {str(k): str(v) for k, v in dict(data["env"]).items()}
        if "args" in data:
            data["args"] = tuple(str(a) for a in data["args"])
        return WasiCapabilities(**data)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"invalid capabilities: {exc}") from exc
