"""Caxton's own contracts for the two drivers, from caxton.testing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from caxton_zone_aware.partition import ZoneMajority
from caxton_zone_aware.placement import ZoneAware

from caxton.testing import PartitionPolicyConformance, PlacementConformance


class TestZoneAwareConformance(PlacementConformance):
    driver_class = ZoneAware
    entry_point_name = "zone-aware"


class TestZoneMajorityConformance(PartitionPolicyConformance):
    driver_class = ZoneMajority
    entry_point_name = "zone-majority"
    driver_config: ClassVar[Mapping[str, Any]] = {
        "zones": {"node-1": "a", "node-2": "b", "node-3": "c", "node-4": "a", "node-5": "b"},
        "tiebreaker": "a",
    }
