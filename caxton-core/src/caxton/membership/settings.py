"""SWIM tuning: the ``[coordination.cluster]`` keys as one validated value object."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from caxton.drivers.transport import Address
from caxton.errors import ConfigError
from caxton.units import parse_address

SECTION = "coordination.cluster"


@dataclass(frozen=True)
class SwimSettings:
    """Every knob of the SWIM core, in seconds where it is a duration.

    The first block are the documented config keys of ``[coordination.cluster]``; the
    second are memberlist's internal constants, settable from code (tests, benchmarks)
    and accepted in the config mapping when a future core section declares them.
    """

    gossip_interval: float = 0.2
    gossip_fanout: int = 3
    probe_interval: float = 1.0
    probe_timeout: float = 0.5
    indirect_probes: int = 3
    suspicion_multiplier: int = 4
    gossip_to_dead: int = 3
    push_pull_interval: float = 30.0
    seeds: tuple[Address, ...] = ()
    bootstrap_expect: int = 0

    #: Retransmissions of each piece of news: retransmit_mult * ceil(log10(n + 1)).
    retransmit_mult: int = 4
    #: The longest suspicion lasts this many times the shortest (Lifeguard).
    suspicion_max_timeout_mult: int = 6
    #: Local health awareness: timeouts scale up to this factor when we are unhealthy.
    awareness_max_multiplier: int = 8
    #: How often a node retries seeds and failed members to heal partitions.
    rejoin_interval: float = 10.0
    #: How long a failed member is kept, listed and retried before it is forgotten.
    reconnect_timeout: float = 24 * 3600.0
    #: How long a member that left stays listed (status ``left``).
    left_retention: float = 3600.0
    #: Timeout of one push-pull exchange over the reliable transport.
    sync_timeout: float = 5.0
    #: Bytes per gossip datagram.
    datagram_budget: int = 1400
    #: Members at or below which push-pull keeps its base interval (memberlist: 32).
    push_pull_scale_threshold: int = 32

    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def probe_round(self) -> float:
        """A probe round: probe_interval, stretched so indirect probes get a chance."""
        return max(self.probe_interval, 2 * self.probe_timeout)

    def with_changes(self, **changes: Any) -> SwimSettings:
        return replace(self, **changes)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SwimSettings:
        """Build from the driver's config mapping (durations already in seconds).

        Unknown keys of the core section (``bind_addr``, ``advertise_addr``, ``regions``,
        ...) are kept in ``extra`` for the driver; wrong values are a ConfigError.
        """
        names = {f.name for f in fields(cls)} - {"extra", "seeds"}
        values: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in config.items():
            if key in names:
                if value is None:
                    continue
                values[key] = _coerce(key, value, cls.__dataclass_fields__[key].type)
            elif key != "seeds":
                extra[key] = value
        seeds = parse_seeds(config.get("seeds") or ())
        settings = cls(seeds=seeds, extra=extra, **values)
        settings.check()
        return settings

    def check(self) -> None:
        positive = (
            "gossip_interval",
            "probe_interval",
            "probe_timeout",
            "push_pull_interval",
            "rejoin_interval",
            "sync_timeout",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{SECTION}.{name} must be greater than zero")
        at_least_one = (
            "gossip_fanout",
            "suspicion_multiplier",
            "retransmit_mult",
            "suspicion_max_timeout_mult",
            "awareness_max_multiplier",
        )
        for name in at_least_one:
            if getattr(self, name) < 1:
                raise ConfigError(f"{SECTION}.{name} must be at least 1")
        for name in ("indirect_probes", "gossip_to_dead", "bootstrap_expect"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{SECTION}.{name} cannot be negative")
        if self.datagram_budget < 512:
            raise ConfigError(f"{SECTION}.datagram_budget must be at least 512 bytes")


def parse_seeds(seeds: Sequence[Any] | str) -> tuple[Address, ...]:
    if isinstance(seeds, str):
        seeds = [s for s in seeds.split(",") if s.strip()]
    parsed: list[Address] = []
    for seed in seeds:
        if isinstance(seed, tuple) and len(seed) == 2:
            parsed.append((str(seed[0]), int(seed[1])))
            continue
        try:
            parsed.append(parse_address(str(seed)))
        except ValueError as exc:
            raise ConfigError(
                f"{SECTION}.seeds: {exc}; write each seed as HOST:PORT, e.g. node-1:7946"
            ) from None
    return tuple(parsed)


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    kind = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    try:
        if isinstance(value, bool):
            raise ValueError
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{SECTION}.{key}: expected a {'whole number' if kind == 'int' else 'number'}, "
            f"got {value!r}"
        ) from None
