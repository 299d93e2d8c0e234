"""The ``static`` membership driver: a fixed member list (``seeds``), health-checked.

For small fixed deployments and tests: no gossip, no dissemination, no metadata
exchange. Each configured peer is pinged every ``probe_interval`` and is ``alive``
while it answers, ``failed`` after ``suspicion_multiplier`` silent rounds, ``left``
when it announced a leave. See :mod:`caxton.membership.static_core`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import ClassVar

from caxton.drivers.membership import MemberStatus
from caxton.drivers.transport import Address
from caxton.membership.driver import CoreDriver
from caxton.membership.settings import parse_seeds
from caxton.membership.static_core import StaticCore


class StaticMembership(CoreDriver):
    name: ClassVar[str] = "static"
    core_class = StaticCore

    async def join(self, seeds: Sequence[Address | str]) -> int:
        """Add ``seeds`` to the fixed list, probe them, and count those answering
        within one probe round."""
        addresses = set(parse_seeds([s if isinstance(s, str) else tuple(s) for s in seeds]))
        loop = self._require_loop()
        self.core.join(loop.time(), addresses)
        self._pump()
        deadline = loop.time() + self.settings.probe_interval

        def answered() -> int:
            return sum(
                1
                for m in self.core.members()
                if m.address in addresses and m.status is MemberStatus.ALIVE
            )

        while answered() < len(addresses) and loop.time() < deadline:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), deadline - loop.time())
            except asyncio.TimeoutError:
                break
        return answered()
