"""Driver interfaces: one abstract base class per kind.

A *driver* is the one active implementation of a kind on a node, selected by its
entry-point name from config (``[plugins] transport = "quic"``) or
``caxton server start --plugin transport=quic``. Auth is the exception: an ordered
chain of drivers. See docs/plugins/drivers.md.
"""

from __future__ import annotations

from caxton.drivers.auth import AuthDriver, Credentials, Identity
from caxton.drivers.base import Driver, DriverContext
from caxton.drivers.membership import Member, Membership, MemberStatus
from caxton.drivers.partition import ClusterView, PartitionDecision, PartitionMode, PartitionPolicy
from caxton.drivers.placement import NodeLoad, PlacementRequest, PlacementStrategy
from caxton.drivers.sandbox import (
    AgentHostAPI,
    AgentInstance,
    CompiledModule,
    HostFunction,
    ResourceLimits,
    Sandbox,
    WasiCapabilities,
)
from caxton.drivers.transport import Address, Frame, FrameKind, PeerStats, Transport

__all__ = [
    "Address",
    "AgentHostAPI",
    "AgentInstance",
    "AuthDriver",
    "ClusterView",
    "CompiledModule",
    "Credentials",
    "Driver",
    "DriverContext",
    "Frame",
    "FrameKind",
    "HostFunction",
    "Identity",
    "Member",
    "MemberStatus",
    "Membership",
    "NodeLoad",
    "PartitionDecision",
    "PartitionMode",
    "PartitionPolicy",
    "PeerStats",
    "PlacementRequest",
    "PlacementStrategy",
    "ResourceLimits",
    "Sandbox",
    "Transport",
    "WasiCapabilities",
]
