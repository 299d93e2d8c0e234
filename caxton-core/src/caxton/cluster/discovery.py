"""Seeds found in DNS: ``coordination.cluster.discovery = "dns"``.

A Kubernetes headless Service publishes one A (or AAAA) record per pod under its name
(``caxton-headless.default.svc.cluster.local``) and SRV records per named port; a Consul
or plain DNS zone can publish the same. With DNS discovery a node joins whatever the
name resolves to, so every pod of a StatefulSet starts with the same config:

- a name starting with ``_`` (``_cluster._tcp.caxton-headless.default.svc.cluster.local``)
  is looked up as SRV: each target host and port is a seed;
- any other name is looked up as A and AAAA: each address, with the port of
  ``coordination.cluster.dns_port`` (default: this node's own cluster port), is a seed.

The node's own address is among them and is skipped by membership. While the node has no
live peer the name is resolved again every ``dns_interval`` and new addresses are joined,
so pods that start together find each other as their records appear. A name that does not
resolve yet is not an error: the first pod of a cluster finds only itself and serves alone
until the others join it.

The resolver is dnspython's, reading ``/etc/resolv.conf`` (what a pod is given), or the
server ``dns_server = "HOST:PORT"`` names.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.resolver

from caxton.units import format_address, parse_address

log = logging.getLogger(__name__)


class DnsSeeds:
    """Resolve ``name`` into seed addresses (``HOST:PORT`` strings)."""

    def __init__(
        self, name: str, default_port: int, server: str | None = None, timeout: float = 2.0
    ) -> None:
        self.name = name
        self.default_port = default_port
        self.resolver = dns.asyncresolver.Resolver(configure=server is None)
        if server is not None:
            host, port = parse_address(server)
            self.resolver.nameservers = [host]
            self.resolver.port = port
        self.resolver.lifetime = timeout

    async def resolve(self) -> list[str]:
        """Every seed the name gives now, sorted; empty when it does not resolve (yet)."""
        if self.name.startswith("_"):
            found = await self._query("SRV")
            seeds = {
                format_address((str(record.target).rstrip("."), int(record.port)))
                for record in found
            }
            # An SRV target is a host name: resolve it here, so that membership sees the
            # same address the target's node advertises.
            return sorted(await self._addresses_of(seeds))
        addresses = [str(r) for kind in ("A", "AAAA") for r in await self._query(kind)]
        return sorted({format_address((address, self.default_port)) for address in addresses})

    async def _addresses_of(self, seeds: set[str]) -> set[str]:
        resolved: set[str] = set()
        for seed in seeds:
            host, port = parse_address(seed)
            addresses = [str(r) for kind in ("A", "AAAA") for r in await self._query(kind, host)]
            resolved |= {format_address((a, port)) for a in addresses} or {seed}
        return resolved

    async def _query(self, kind: str, name: str | None = None) -> list[Any]:
        try:
            # search=True: a short name (a Service's) goes through resolv.conf's search
            # list, as the system resolver would take it.
            answer = await self.resolver.resolve(name or self.name, kind, search=True)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers):
            return []
        except dns.exception.Timeout:
            log.warning("DNS discovery: no answer for %s %s", kind, name or self.name)
            return []
        return list(answer)


async def rejoin_until_joined(
    seeds: DnsSeeds,
    join: Callable[[list[str]], Awaitable[int]],
    has_peers: Callable[[], bool],
    interval: float,
    known: set[str],
) -> None:
    """Resolve again every ``interval`` while there is no live peer; join what is new."""
    while not has_peers():
        await asyncio.sleep(interval)
        found = [seed for seed in await seeds.resolve() if seed not in known]
        if found:
            known.update(found)
            log.info("DNS discovery: %s gives new seeds %s", seeds.name, ", ".join(found))
            await join(found)
