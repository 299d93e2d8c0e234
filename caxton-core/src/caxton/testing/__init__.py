"""Public test helpers for Caxton and its plugins.

* :class:`NodeFactory`: isolated nodes in one process (optionally without entry points);
* :class:`HookRecorder`: records the hook calls of a plugin host;
* one conformance suite per driver kind, which a plugin's tests subclass:
  :class:`SandboxConformance`, :class:`TransportConformance`, :class:`PlacementConformance`,
  :class:`PartitionPolicyConformance`, :class:`AuthConformance`, and the membership and
  messaging helpers of :mod:`caxton.testing.membership` and :mod:`caxton.testing.messaging`;
* :class:`~caxton.testing.network.LinkCuts`: one-way, two-way and shaped network cuts
  between the nodes of one test process;
* pytest fixtures ``caxton_node_factory`` and ``caxton_hook_recorder``, from the pytest
  plugin :mod:`caxton.testing.pytest_plugin` that installing caxton-core registers.

Everything except the node factory and the recorder is imported on first use, so
``import caxton.testing`` needs neither pytest nor a kind's optional dependencies.
See docs/plugins/testing.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from caxton.testing.node import HookRecorder, NodeFactory, RecordedHookCall

if TYPE_CHECKING:
    from caxton.testing.conformance import (
        AuthConformance,
        DriverConformance,
        PartitionPolicyConformance,
        PlacementConformance,
    )

#: Names imported on first use, and the submodule each lives in.
_LAZY = {
    "AuthConformance": "conformance",
    "DriverConformance": "conformance",
    "PartitionPolicyConformance": "conformance",
    "PlacementConformance": "conformance",
    "SandboxConformance": "sandbox",
    "RecordingAgentHost": "sandbox",
    "TransportConformance": "transport",
}
#: Submodules searched for any other public name (``caxton.testing.MembershipConformance``).
_SUBMODULES = ("conformance", "sandbox", "transport", "membership", "messaging", "network")

__all__ = [
    "AuthConformance",
    "DriverConformance",
    "HookRecorder",
    "NodeFactory",
    "PartitionPolicyConformance",
    "PlacementConformance",
    "RecordedHookCall",
    "RecordingAgentHost",
    "SandboxConformance",
    "TransportConformance",
]


def _submodule(name: str) -> Any:
    """Import ``caxton.testing.NAME``; None when that module does not exist (yet)."""
    qualified = f"{__name__}.{name}"
    try:
        return importlib.import_module(qualified)
    except ModuleNotFoundError as exc:
        if exc.name == qualified:
            return None
        raise


def __getattr__(name: str) -> Any:
    modules = [_LAZY[name]] if name in _LAZY else [] if name.startswith("_") else _SUBMODULES
    for module_name in modules:
        module = _submodule(module_name)
        if module is not None and hasattr(module, name):
            value = getattr(module, name)
            globals()[name] = value
            return value
    where = f"caxton.testing.{_LAZY[name]}" if name in _LAZY else "caxton.testing"
    raise AttributeError(f"module 'caxton.testing' has no attribute '{name}' (looked in {where})")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
