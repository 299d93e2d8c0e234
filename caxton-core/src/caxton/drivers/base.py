"""What every driver shares: construction from its config section and the node context."""

from __future__ import annotations

import logging
from abc import ABC
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import pluggy

    from caxton.config import ConfigSection


@dataclass
class DriverContext:
    """The node-level facts and services a driver may use.

    ``hook`` is the node's pluggy hook relay (``context.hook.caxton_member_joined(...)``);
    ``services`` holds other drivers already started on this node, by kind (a
    membership driver finds the transport at ``services["transport"]``).
    """

    node_id: str
    data_dir: Path
    hook: pluggy.HookRelay
    services: dict[str, Any] = field(default_factory=dict)
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("caxton"))

    def node_config(self, section: str) -> Mapping[str, Any]:
        """Section ``section`` of the node's configuration (``"runtime"``), or an empty
        mapping when no node built this driver (tests, benchmarks, embedding)."""
        config = getattr(self.services.get("node"), "config", None)
        if config is None:
            return {}
        try:
            values = config[section]
        except (KeyError, TypeError):
            return {}
        return values if isinstance(values, Mapping) else {}


class Driver(ABC):  # noqa: B024 - each kind's subclass declares the abstract methods
    """Base class of every driver kind.

    Subclasses are published under the kind's entry-point group; the entry-point name
    is the value operators write in config. The host constructs the selected class with
    ``cls(config, context)`` where ``config`` is the driver's own config section, already
    validated against ``config_section`` when the class declares one.
    """

    #: The kind this base serves ("sandbox", "transport", ...). Set on each kind's ABC.
    kind: ClassVar[str] = ""
    #: Declared config section (``[transport.quic]`` for the quic transport); optional.
    config_section: ClassVar[ConfigSection | None] = None

    def __init__(self, config: Mapping[str, Any], context: DriverContext) -> None:
        self.config = dict(config)
        self.context = context

    async def start(self) -> None:
        """Acquire resources (sockets, threads, files). Called once before use."""

    async def close(self) -> None:
        """Release everything :meth:`start` acquired. Must be safe to call twice."""
