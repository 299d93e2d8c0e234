"""A node takes back from its peers what it lost with its data directory:
``caxton cluster rebuild --node N --from-peers``.

Node N (running, typically started again on an empty or fresh data directory) asks every
live peer, with the sealed ``rebuild-holdings`` operation, for:

- the replicas the peer keeps of N's agents (their spec, generation and holders): each
  agent is taken back through the same fenced takeover a failover uses
  (:meth:`caxton.cluster.failover.Failover._take`): a majority of the agent's replica set
  must promise N a generation above any it promised before, and N starts the agent with
  the highest state those holders have. An agent that another node took over while N
  was away is left there (the registry shows it elsewhere, and its holders, promised to
  the new owner, refuse N): a rebuild never brings back a stale owner;
- the agents' modules it lacks (``rebuild-module``, checked against their sha256);
- and the peer re-sends N the replicas (and, with quorum durability, the state) of its
  own agents that N held: it forgets what it had sent N, so N is a full holder again.

The registry comes back by gossip: N pulls every peer's part. What lives only in a
node's own store (API keys, dead letters, conversations, queued messages) is not on its
peers: a backup brings it back (``caxton backup restore``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from caxton.errors import CaxtonError, Conflict, NotFound, ValidationError

if TYPE_CHECKING:
    from caxton.cluster.failover import Replica
    from caxton.cluster.service import Cluster
    from caxton.node import Node

__all__ = ["NOT_FROM_PEERS", "OPS", "rebuild_from_peers", "run"]

log = logging.getLogger("caxton.cluster.rebuild")

#: The control ops this module answers (sealed, see :mod:`caxton.cluster.trust`).
OPS = frozenset({"rebuild", "rebuild-holdings", "rebuild-module"})
#: Seconds a peer has to answer one ``rebuild-holdings`` or ``rebuild-module``.
PEER_TIMEOUT = 15.0
#: Seconds the node asked may take for the whole rebuild.
REBUILD_TIMEOUT = 120.0
#: What a rebuild cannot take from peers, said in every report.
NOT_FROM_PEERS = (
    "API keys, dead letters, conversations and queued messages are kept only in a node's "
    "own store: restore them from a backup (caxton backup restore)"
)


async def run(node: Node, op: str, body: Mapping[str, Any], sender: str) -> Any:
    """Answer one of :data:`OPS` asked by ``sender``."""
    cluster: Cluster = node.cluster
    if op == "rebuild":
        return await rebuild_from_peers(cluster)
    if op == "rebuild-holdings":
        return await _holdings_of(cluster, sender)
    sha256 = body.get("sha256")
    if not isinstance(sha256, str) or len(sha256) != 64:
        raise ValidationError("malformed rebuild-module request")
    wasm = await node.store.load_module(sha256)
    if wasm is None:
        raise NotFound(f"node {node.node_id} has no module {sha256[:12]}")
    return wasm


# -- the peers' side --------------------------------------------------------------------


async def _holdings_of(cluster: Cluster, lost: str) -> dict[str, Any]:
    """What this node keeps of ``lost``'s agents; and send ``lost`` again the replicas
    of this node's agents it held."""
    failover = cluster.failover
    replicas = [r.record() for r in failover.replicas.values() if r.owner == lost]
    kv: dict[str, list[list[bytes]]] = {}
    if failover.durability != "quorum":  # quorum: the takeover's promises carry the state
        for record in replicas:
            state = await cluster.node.store.load_kv(record["agent_id"])
            kv[record["agent_id"]] = [[k, v] for k, v in state.items()]
    resent = []
    ownership = failover.ownership
    for agent_id, holders in failover.holders.items():
        if lost not in holders:
            continue
        failover._pushed.pop(agent_id, None)  # its replica goes to `lost` again
        owned = ownership.owned.get(agent_id)
        if owned is not None:  # and the whole state, which it no longer acknowledges
            owned.sent[lost] = None
            owned.acked.pop(lost, None)
            ownership._schedule_resync(agent_id)
        resent.append(agent_id)
    failover.schedule_reconcile()
    return {"replicas": replicas, "kv": kv, "resent": len(resent)}


# -- the rebuilt node's side --------------------------------------------------------------


async def rebuild_from_peers(cluster: Cluster) -> dict[str, Any]:
    """Take back this node's agents from its peers; the report (see the module)."""
    from caxton.cluster.failover import Replica

    node, failover = cluster.node, cluster.failover
    peers = [m.node_id for m in cluster._peers()]
    if not peers:
        raise Conflict(f"node {cluster.node_id} reaches no peer to rebuild from")
    answers = await cluster.operations.fan_out("rebuild-holdings", {}, PEER_TIMEOUT, peers)
    failed = {n: str(a) for n, a in answers.items() if isinstance(a, CaxtonError)}
    found: dict[str, tuple[Replica, list[str]]] = {}
    kv: dict[str, list[Any]] = {}
    resent = 0
    for peer, answer in answers.items():
        if isinstance(answer, CaxtonError) or not isinstance(answer, Mapping):
            continue
        resent += int(answer.get("resent") or 0)
        kv.update(answer.get("kv") or {})
        for record in answer.get("replicas") or ():
            try:
                replica = Replica.from_wire(cluster.node_id, record)
            except ValidationError:
                log.warning("ignoring a malformed replica from %s", peer)
                continue
            known, sources = found.get(replica.agent_id, (replica, []))
            if replica.generation > known.generation:
                known = replica
            found[replica.agent_id] = (known, [*sources, peer])
    for peer in peers:
        cluster._pull(peer)
    recovered: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for replica, sources in sorted(found.values(), key=lambda item: item[0].name):
        reason = await _take_back(cluster, replica, sources, kv.get(replica.agent_id))
        if reason is None:
            runtime = node.agents.runtime(replica.agent_id)
            recovered.append(
                {
                    "name": replica.name,
                    "agent_id": replica.agent_id,
                    "generation": failover.generation(replica.agent_id),
                    "keys": len(runtime.kv),
                    "from": sorted(sources),
                }
            )
        else:
            skipped.append({"name": replica.name, "agent_id": replica.agent_id, "reason": reason})
    if not failed:  # it knows its agents again: it may tell holders what to drop
        failover.amnesic = False
    await asyncio.sleep(0)  # let the pulls start before counting the registry
    report = {
        "node_id": cluster.node_id,
        "peers": sorted(set(peers) - set(failed)),
        "failed": failed,
        "recovered": recovered,
        "skipped": skipped,
        "replicas_resent": resent,
        "registry_agents": len(cluster.registry.entries()),
        "not_recovered": NOT_FROM_PEERS,
    }
    cluster.events.record(
        "rebuilt",
        f"Node {cluster.node_id} rebuilt from its peers: {len(recovered)} agents taken back, "
        f"{len(skipped)} left where they are",
        node_id=cluster.node_id,
        level="warning" if skipped or failed else "info",
    )
    return report


async def _take_back(
    cluster: Cluster, replica: Replica, sources: list[str], kv: list[Any] | None
) -> str | None:
    """Restart ``replica``'s agent here by a fenced takeover; why not (None: it runs)."""
    node, failover = cluster.node, cluster.failover
    agents = node.agents
    if replica.agent_id in agents:
        return f"already runs on {cluster.node_id}"
    for entry in cluster.registry.lookup(replica.name):
        if entry.node_id != cluster.node_id:
            if entry.agent_id == replica.agent_id:
                return (
                    f"runs on {entry.node_id} now (taken over while {cluster.node_id} was "
                    f"away): left there"
                )
            return f"the name is taken by another agent on {entry.node_id}"
    if replica.name in agents:
        return f"the name is taken by another agent on {cluster.node_id}"
    store = node.store
    if await store.load_module(replica.module_sha256) is None:
        wasm = await _fetch_module(cluster, replica, sources)
        if wasm is None:
            return f"no peer could send its module {replica.module_sha256[:12]}"
        store.put_module(replica.module_sha256, wasm)
    if kv and failover.durability != "quorum":
        for key, value in kv:
            store.kv_put(replica.agent_id, bytes(key), bytes(value))
        await store.flush()
    await failover._take(replica, start=replica.spec.start)
    if replica.agent_id not in agents:
        return (
            f"a majority of its replica set ({', '.join(replica.holders)}) did not promise "
            f"{cluster.node_id} a new generation: another node owns it, or too few of its "
            f"holders answer (caxton cluster watch says which)"
        )
    return None


async def _fetch_module(cluster: Cluster, replica: Replica, sources: list[str]) -> bytes | None:
    for peer in sources:
        try:
            wasm = await cluster.operations.ask(
                peer, "rebuild-module", {"sha256": replica.module_sha256}, PEER_TIMEOUT
            )
        except CaxtonError as exc:
            log.warning("module of %s from %s: %s", replica.name, peer, exc)
            continue
        if isinstance(wasm, bytes) and hashlib.sha256(wasm).hexdigest() == replica.module_sha256:
            return wasm
    return None
