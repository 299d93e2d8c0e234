"""The ``swim`` membership driver: SWIM with the Lifeguard refinements (core's default).

The protocol lives in the sans-IO :class:`~caxton.membership.swim_core.SwimCore`; this
driver runs it on the event loop (see :mod:`caxton.membership.driver` for the wiring).
Configured by ``[coordination.cluster]``; see docs/membership.md.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from caxton.drivers.transport import Address
from caxton.membership.driver import CoreDriver
from caxton.membership.swim_core import SwimCore


class SwimMembership(CoreDriver):
    name: ClassVar[str] = "swim"
    core_class = SwimCore

    def make_core(self, address: Address, meta: Mapping[str, Any], now: float) -> SwimCore:
        """The core, on the loop's clock, told wall time so members agree on probe rounds."""
        return SwimCore(
            self.context.node_id,
            address,
            self.settings,
            now=now,
            rng=random.Random(),
            meta=meta,
            clock_offset=time.time() - now,
        )
