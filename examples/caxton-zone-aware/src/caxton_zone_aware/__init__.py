"""caxton-zone-aware: an example third-party Caxton plugin.

Three entry points, one per mechanism Caxton offers:

* ``caxton.placement`` / ``zone-aware``: :class:`~caxton_zone_aware.placement.ZoneAware`,
  a placement strategy that keeps agents in their zone;
* ``caxton.partition_policy`` / ``zone-majority``:
  :class:`~caxton_zone_aware.partition.ZoneMajority`, which stays writable while a
  majority of zones (not of nodes) is reachable;
* ``caxton.hooks`` / ``zone-filter``: :mod:`caxton_zone_aware.hooks`, a hard zone filter
  for placement and a start-up log line.
"""

from __future__ import annotations

__version__ = "0.1.0"
