from __future__ import annotations

from caxton_zone_aware import hooks

from caxton.drivers import NodeLoad, PlacementRequest
from caxton.plugins import PluginHost

NODES = [NodeLoad("n1", zone="eu-1a"), NodeLoad("n2", zone="eu-1b"), NodeLoad("n3", zone="")]


def test_filter_drops_nodes_outside_the_allowed_zones() -> None:
    request = PlacementRequest("a", requirements={"zones": "eu-1a, eu-1c"})
    assert hooks.caxton_placement_filter(request=request, candidates=NODES) == ["n2", "n3"]


def test_filter_abstains_without_the_requirement() -> None:
    request = PlacementRequest("a", requirements={"zone": "eu-1a"})
    assert hooks.caxton_placement_filter(request=request, candidates=NODES) is None


def test_hooks_match_caxton_hookspecs() -> None:
    host = PluginHost(use_entry_points=False)
    host.register(hooks, name="zone-filter")
    host.check_hooks()  # a misspelt or mistyped hookimpl raises here
    assert host.hooks_of(hooks) == ["caxton_node_started", "caxton_placement_filter"]
    request = PlacementRequest("a", requirements={"zones": "eu-1b"})
    results = host.hook.caxton_placement_filter(request=request, candidates=NODES)
    assert ["n1", "n3"] in results
