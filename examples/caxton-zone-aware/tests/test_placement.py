from __future__ import annotations

from caxton_zone_aware.placement import ZoneAware

from caxton.drivers import DriverContext, NodeLoad, PlacementRequest

NODES = [
    NodeLoad("n1", agents=5, region="eu", zone="eu-1a"),
    NodeLoad("n2", agents=1, region="eu", zone="eu-1b"),
    NodeLoad("n3", agents=0, region="us", zone="us-1a"),
    NodeLoad("n4", agents=2, region="eu", zone="eu-1a"),
]


def ids(nodes: list[NodeLoad]) -> list[str]:
    return [n.node_id for n in nodes]


def test_required_zone_first_then_region_then_rest(context: DriverContext) -> None:
    strategy = ZoneAware({}, context)
    request = PlacementRequest("a", requirements={"zone": "eu-1b", "region": "eu"})
    assert ids(strategy.rank(request, NODES)) == ["n2", "n4", "n1", "n3"]


def test_least_loaded_within_the_zone(context: DriverContext) -> None:
    strategy = ZoneAware({}, context)
    request = PlacementRequest("a", requirements={"zone": "eu-1a"})
    assert ids(strategy.rank(request, NODES))[:2] == ["n4", "n1"]


def test_defaults_to_the_placing_nodes_zone(context: DriverContext) -> None:
    # context is node n1, in eu-1a: its zone first, then the rest of its region.
    strategy = ZoneAware({}, context)
    assert ids(strategy.rank(PlacementRequest("a"), NODES)) == ["n4", "n1", "n2", "n3"]


def test_without_local_default_it_is_least_loaded(context: DriverContext) -> None:
    strategy = ZoneAware({"default_to_local_zone": False}, context)
    assert ids(strategy.rank(PlacementRequest("a"), NODES)) == ["n3", "n2", "n4", "n1"]


def test_custom_requirement_key(context: DriverContext) -> None:
    strategy = ZoneAware({"zone_key": "az"}, context)
    request = PlacementRequest("a", requirements={"az": "us-1a"})
    assert ids(strategy.rank(request, NODES))[0] == "n3"


def test_target_and_preferred_nodes_win_over_zones(context: DriverContext) -> None:
    strategy = ZoneAware({}, context)
    pinned = PlacementRequest("a", target_node="n3", requirements={"zone": "eu-1a"})
    assert ids(strategy.rank(pinned, NODES)) == ["n3"]
    preferred = PlacementRequest("a", prefer_nodes=("n1",), requirements={"zone": "us-1a"})
    assert ids(strategy.rank(preferred, NODES))[:2] == ["n1", "n3"]


def test_unknown_zone_still_ranks_everyone(context: DriverContext) -> None:
    strategy = ZoneAware({}, context)
    request = PlacementRequest("a", requirements={"zone": "ap-9z"})
    assert sorted(ids(strategy.rank(request, NODES))) == ["n1", "n2", "n3", "n4"]
    assert strategy.rank(request, []) == []
