"""The ``swim`` membership driver: SWIM with the Lifeguard refinements (core's default).

The protocol lives in the sans-IO :class:`~caxton.membership.swim_core.SwimCore`; this
driver runs it on the event loop (see :mod:`caxton.membership.driver` for the wiring).
Configured by ``[coordination.cluster]``; see docs/membership.md.
"""

from __future__ import annotations

from typing import ClassVar

from caxton.membership.driver import CoreDriver
from caxton.membership.swim_core import SwimCore


class SwimMembership(CoreDriver):
    name: ClassVar[str] = "swim"
    core_class = SwimCore
