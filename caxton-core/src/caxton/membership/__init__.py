"""Cluster membership: core's ``swim`` and ``static`` drivers and their sans-IO cores.

- :mod:`caxton.membership.swim_core`: the SWIM + Lifeguard state machine (no I/O).
- :mod:`caxton.membership.static_core`: a fixed, health-checked member list (no I/O).
- :mod:`caxton.membership.driver`: runs a core on asyncio with the node's transport.
- :mod:`caxton.membership.swim`, :mod:`caxton.membership.static`: the drivers.
- :mod:`caxton.membership.codec`: the wire format.

See docs/membership.md. The simulator used by the tests and benchmarks is
:mod:`caxton.testing.membership`.
"""

from __future__ import annotations

from caxton.membership.core import EventKind, MemberEvent, MembershipStats
from caxton.membership.settings import SwimSettings

__all__ = ["EventKind", "MemberEvent", "MembershipStats", "SwimSettings"]
