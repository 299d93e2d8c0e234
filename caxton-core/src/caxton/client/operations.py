"""Every REST operation of the Caxton API, once, for both clients.

:class:`Operations` builds a :class:`~caxton.client._core.Call` per operation and hands
it to ``_send``, which :class:`~caxton.client.Client` answers with the decoded JSON and
:class:`~caxton.client.AsyncClient` with an awaitable of it. The JSON is what the API
documents (docs/api.md, ``GET /api/v1/openapi.json``): agents, messages and the rest as
dicts.
"""

from __future__ import annotations

import base64
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any, Generic, TypeVar

from caxton.client._core import Call

__all__ = ["Operations"]

#: What an operation returns: the JSON (sync) or an awaitable of it (async).
R = TypeVar("R")


def _module(wasm: bytes) -> str:
    return base64.b64encode(bytes(wasm)).decode("ascii")


def _state_key(agent_id: str, key: str | bytes) -> tuple[str, dict[str, Any]]:
    """The path of one key of an agent's state: its text, or URL-safe base64 for bytes."""
    if isinstance(key, str):
        return f"/api/v1/agents/{agent_id}/state/{urllib.parse.quote(key, safe='')}", {}
    encoded = base64.urlsafe_b64encode(bytes(key)).decode("ascii").rstrip("=")
    return f"/api/v1/agents/{agent_id}/state/{encoded}", {"encoding": "base64"}


def _scope(cluster: bool) -> str | None:
    return "cluster" if cluster else None


def _drop_none(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


class Operations(Generic[R]):
    """The REST operations; see docs/client.md for examples."""

    def _send(self, call: Call) -> R:
        raise NotImplementedError

    # -- health -------------------------------------------------------------------------

    def health(self) -> R:
        return self._send(Call("GET", "/api/v1/health", idempotent=True))

    def alive(self) -> R:
        """The liveness answer: the process serves."""
        return self._send(Call("GET", "/health", idempotent=True))

    def ready(self) -> R:
        """The readiness answer (a 503 when not ready raises ApiError)."""
        return self._send(Call("GET", "/ready", idempotent=True))

    def openapi(self) -> R:
        return self._send(Call("GET", "/api/v1/openapi.json", idempotent=True))

    # -- agents -------------------------------------------------------------------------

    def list_agents(
        self,
        *,
        cluster: bool = False,
        name: str | None = None,
        state: str | None = None,
        node: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> R:
        """This node's agents, or with ``cluster=True`` every node's; ``name`` is a glob."""
        query = {
            "scope": _scope(cluster),
            "name": name,
            "state": state,
            "node": node,
            "limit": limit,
            "offset": offset,
        }
        return self._send(Call("GET", "/api/v1/agents", query, idempotent=True))

    def deploy_agent(
        self,
        name: str,
        wasm: bytes,
        *,
        limits: Mapping[str, int] | None = None,
        start: bool = True,
        allowed_senders: Sequence[str] | None = None,
        placement_strategy: str | None = None,
        prefer_nodes: Sequence[str] | None = None,
        target_node: str | None = None,
        replace: bool = False,
    ) -> R:
        body = _drop_none(
            {
                "name": name,
                "wasm_module": _module(wasm),
                "resource_limits": dict(limits) if limits else None,
                "start": None if start else False,
                "allowed_senders": list(allowed_senders) if allowed_senders is not None else None,
                "placement_strategy": placement_strategy,
                "prefer_nodes": list(prefer_nodes) if prefer_nodes else None,
                "target_node": target_node,
                "replace": True if replace else None,
            }
        )
        return self._send(Call("POST", "/api/v1/agents", body=body))

    def get_agent(self, agent_id: str) -> R:
        """One agent by id, from any node of the cluster."""
        return self._send(Call("GET", f"/api/v1/agents/{agent_id}", idempotent=True))

    def update_agent(
        self, agent_id: str, *, wasm: bytes | None = None, limits: Mapping[str, int] | None = None
    ) -> R:
        """Hot swap the module and/or the limits (same id, name and state)."""
        body = _drop_none(
            {
                "wasm_module": _module(wasm) if wasm is not None else None,
                "resource_limits": dict(limits) if limits else None,
            }
        )
        return self._send(Call("PUT", f"/api/v1/agents/{agent_id}", body=body))

    def agent_logs(
        self, agent_id: str, *, since: float | None = None, after: int | None = None
    ) -> R:
        """The agent's log lines, oldest first (``stream`` with ``follow=true`` follows)."""
        query = {"since": since, "after": after}
        return self._send(Call("GET", f"/api/v1/agents/{agent_id}/logs", query, idempotent=True))

    def agent_state(
        self,
        agent_id: str,
        *,
        prefix: str | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> R:
        """The agent's keys and the size of their values (``next`` -> ``after`` pages on)."""
        query = {"prefix": prefix, "after": after, "limit": limit}
        return self._send(Call("GET", f"/api/v1/agents/{agent_id}/state", query, idempotent=True))

    def get_agent_state(self, agent_id: str, key: str | bytes) -> R:
        """One key's entry: ``value`` (text, or None when not UTF-8) and ``value_base64``."""
        path, query = _state_key(agent_id, key)
        return self._send(Call("GET", path, query, idempotent=True))

    def set_agent_state(self, agent_id: str, key: str | bytes, value: str | bytes) -> R:
        """Set ``key`` as the agent's own ``kv_store`` would; answered once durable."""
        path, query = _state_key(agent_id, key)
        body = {"value": value} if isinstance(value, str) else {"value_base64": _module(value)}
        return self._send(Call("PUT", path, query, body=body, idempotent=True))

    def delete_agent_state(self, agent_id: str, key: str | bytes) -> R:
        path, query = _state_key(agent_id, key)
        return self._send(Call("DELETE", path, query))

    def remove_agent(self, agent_id: str) -> R:
        return self._send(Call("DELETE", f"/api/v1/agents/{agent_id}"))

    def start_agent(self, agent_id: str) -> R:
        return self._send(Call("POST", f"/api/v1/agents/{agent_id}/start"))

    def stop_agent(self, agent_id: str, *, drain: float | None = None) -> R:
        """Stop; ``drain`` seconds let in-flight conversations finish first."""
        query = {"drain_timeout_ms": round(drain * 1000) if drain else None}
        return self._send(Call("POST", f"/api/v1/agents/{agent_id}/stop", query, wait=drain or 0.0))

    def suspend_agent(self, agent_id: str) -> R:
        return self._send(Call("POST", f"/api/v1/agents/{agent_id}/suspend"))

    def resume_agent(self, agent_id: str) -> R:
        return self._send(Call("POST", f"/api/v1/agents/{agent_id}/resume"))

    def move_agent(self, agent_id: str, to: str) -> R:
        """Move the running agent to node ``to`` (live migration, from any node)."""
        body = {"to": to}
        return self._send(Call("POST", f"/api/v1/agents/{agent_id}/move", body=body, wait=30.0))

    # -- messages and tasks ------------------------------------------------------------

    def send_message(
        self,
        receiver: str,
        content: Any = None,
        *,
        performative: str = "request",
        wait: float | None = None,
        sender: str | None = None,
        conversation_id: str | None = None,
        protocol: str | None = None,
        priority: str | None = None,
    ) -> R:
        """Send a FIPA-ACL message; with ``wait`` seconds, the answer has the reply."""
        body = _drop_none(
            {
                "performative": performative,
                "receiver": receiver,
                "content": content,
                "sender": sender,
                "conversation_id": conversation_id,
                "protocol": protocol,
                "priority": priority,
                "wait_ms": round(wait * 1000) if wait else None,
            }
        )
        return self._send(Call("POST", "/api/v1/messages", body=body, wait=wait or 0.0))

    def conversations(
        self, *, participant: str | None = None, limit: int | None = None, cluster: bool = False
    ) -> R:
        """Recent conversations, newest first (``cluster=True``: every node's)."""
        query = {"participant": participant, "limit": limit, "scope": _scope(cluster)}
        return self._send(Call("GET", "/api/v1/conversations", query, idempotent=True))

    def conversation(self, conversation_id: str, *, cluster: bool = False) -> R:
        """One conversation with its first messages (``cluster=True``: as every node saw it)."""
        path = f"/api/v1/conversations/{conversation_id}"
        return self._send(Call("GET", path, {"scope": _scope(cluster)}, idempotent=True))

    def create_task(self, body: Mapping[str, Any]) -> R:
        """A contract-net task (the body as docs/api.md "Contract net" describes it)."""
        return self._send(Call("POST", "/api/v1/tasks", body=dict(body)))

    def get_task(self, task_id: str) -> R:
        return self._send(Call("GET", f"/api/v1/tasks/{task_id}", idempotent=True))

    def distribute_task(self, task_id: str, *, wait: float = 0.0) -> R:
        """Run the call for proposals; ``wait``: the task's deadline plus result timeout."""
        return self._send(Call("POST", f"/api/v1/tasks/{task_id}/distribute", wait=wait))

    # -- node --------------------------------------------------------------------------

    def queues(self) -> R:
        return self._send(Call("GET", "/api/v1/queues", idempotent=True))

    def drain_queues(self, timeout: float = 60.0) -> R:
        body = {"timeout_ms": round(timeout * 1000)}
        return self._send(Call("POST", "/api/v1/queues/drain", body=body, wait=timeout))

    def resources(self) -> R:
        return self._send(Call("GET", "/api/v1/resources", idempotent=True))

    def whoami(self) -> R:
        """The caller's identity, roles and permissions."""
        return self._send(Call("GET", "/api/v1/whoami", idempotent=True))

    def dead_letters(
        self,
        *,
        limit: int | None = None,
        message_id: str | None = None,
        receiver: str | None = None,
        cluster: bool = False,
    ) -> R:
        query = {
            "limit": limit,
            "message_id": message_id,
            "receiver": receiver,
            "scope": _scope(cluster),
        }
        return self._send(Call("GET", "/api/v1/queues/dead-letters", query, idempotent=True))

    # -- emergencies (docs/operations.md; bodies as docs/api.md gives them) -------------

    def emergency_stop(
        self, *, cluster: bool = False, preserve_state: bool = False, dump_to: str | None = None
    ) -> R:
        body = _drop_none(
            {
                "all_agents": True,
                "cluster": cluster or None,
                "preserve_state": preserve_state or None,
                "dump_to": dump_to,
            }
        )
        return self._send(Call("POST", "/api/v1/emergency/stop", body=body, wait=120.0))

    def emergency_start(self, body: Mapping[str, Any] | None = None) -> R:
        return self._send(
            Call("POST", "/api/v1/emergency/start", body=dict(body or {}), wait=120.0)
        )

    def emergency_suspend(self, body: Mapping[str, Any]) -> R:
        """Suspend agents by priority, e.g. ``{"priority": "low"}``."""
        return self._send(Call("POST", "/api/v1/emergency/suspend", body=dict(body), wait=60.0))

    def emergency_resume(self, body: Mapping[str, Any] | None = None) -> R:
        return self._send(
            Call("POST", "/api/v1/emergency/resume", body=dict(body or {}), wait=60.0)
        )

    def shed_load(self, body: Mapping[str, Any]) -> R:
        return self._send(Call("POST", "/api/v1/emergency/shed-load", body=dict(body), wait=60.0))

    def circuit_breakers(self) -> R:
        return self._send(Call("GET", "/api/v1/circuit-breakers", idempotent=True))

    def activate_circuit_breaker(self, body: Mapping[str, Any]) -> R:
        return self._send(Call("POST", "/api/v1/circuit-breakers/activate", body=dict(body)))

    def reset_circuit_breakers(self, body: Mapping[str, Any] | None = None) -> R:
        return self._send(Call("POST", "/api/v1/circuit-breakers/reset", body=dict(body or {})))

    def isolate_node(self, node_id: str) -> R:
        return self._send(Call("POST", "/api/v1/cluster/isolate", body={"node": node_id}))

    def rejoin_node(self, node_id: str) -> R:
        return self._send(Call("POST", "/api/v1/cluster/rejoin", body={"node": node_id}))

    # -- backups (the archive itself: ``iter_bytes(f"/api/v1/backups/{id}/archive")``) --

    def backups(self) -> R:
        return self._send(Call("GET", "/api/v1/backups", idempotent=True))

    def create_backup(self, backup_type: str | None = None) -> R:
        body = _drop_none({"type": backup_type})
        return self._send(Call("POST", "/api/v1/backups", body=body, wait=300.0))

    def get_backup(self, backup_id: str) -> R:
        return self._send(Call("GET", f"/api/v1/backups/{backup_id}", idempotent=True))

    def verify_backup(self, backup_id: str) -> R:
        return self._send(Call("POST", f"/api/v1/backups/{backup_id}/verify", wait=300.0))

    def remove_backup(self, backup_id: str) -> R:
        return self._send(Call("DELETE", f"/api/v1/backups/{backup_id}"))

    def cluster_backup(self, body: Mapping[str, Any]) -> R:
        """A snapshot of every node (``{"dest": ...}`` as docs/api.md gives it)."""
        return self._send(Call("POST", "/api/v1/cluster/backups", body=dict(body), wait=600.0))

    def audit(
        self,
        *,
        limit: int | None = None,
        identity: str | None = None,
        action: str | None = None,
        result: str | None = None,
        since: float | None = None,
    ) -> R:
        query = {"limit": limit, "identity": identity, "action": action, "result": result,
                 "since": since}  # fmt: skip
        return self._send(Call("GET", "/api/v1/audit", query, idempotent=True))

    # -- cluster -----------------------------------------------------------------------

    def cluster_members(self) -> R:
        return self._send(Call("GET", "/api/v1/cluster/members", idempotent=True))

    def cluster_status(self) -> R:
        return self._send(Call("GET", "/api/v1/cluster/status", idempotent=True))

    def cluster_partition(self) -> R:
        return self._send(Call("GET", "/api/v1/cluster/partition", idempotent=True))

    def cluster_agents(self) -> R:
        """The cluster's agent registry: every agent with its node."""
        return self._send(Call("GET", "/api/v1/cluster/agents", idempotent=True))

    def cluster_events(self, limit: int | None = None) -> R:
        return self._send(Call("GET", "/api/v1/cluster/events", {"limit": limit}, idempotent=True))

    def cluster_ping(self, node_id: str) -> R:
        return self._send(Call("GET", f"/api/v1/cluster/members/{node_id}/ping", idempotent=True))

    def cluster_auth(self) -> R:
        return self._send(Call("GET", "/api/v1/cluster/auth", idempotent=True))

    def cluster_latency(self) -> R:
        """Every node's routing-latency histograms and message count (cumulative)."""
        return self._send(Call("GET", "/api/v1/cluster/latency", idempotent=True))

    def cluster_verify(self, *, deep: bool = False, node_id: str | None = None) -> R:
        """Members and registry versions agree; ``deep`` (or ``node_id``, that member
        only) also compares registries, replicas and state stores."""
        query = {"deep": "true" if deep else None, "node": node_id}
        return self._send(Call("GET", "/api/v1/cluster/verify", query, wait=30.0, idempotent=True))

    def cluster_leave(self, *, node_id: str | None = None, drain: float | None = None) -> R:
        body = _drop_none(
            {"node": node_id, "drain_timeout_ms": round(drain * 1000) if drain else None}
        )
        return self._send(Call("POST", "/api/v1/cluster/leave", body=body, wait=drain or 0.0))

    def cluster_rebalance(
        self,
        *,
        strategy: str | None = None,
        dry_run: bool = False,
        max_parallel: int | None = None,
    ) -> R:
        """Plan live moves that even out the agents; carry them out unless ``dry_run``."""
        body = _drop_none({"strategy": strategy, "dry_run": dry_run, "max_parallel": max_parallel})
        return self._send(Call("POST", "/api/v1/cluster/rebalance", body=body, wait=120.0))

    def cluster_drain(self, *, node_id: str | None = None, timeout: float = 60.0) -> R:
        """Move every agent of this node (or ``node_id``) to the others."""
        body = _drop_none({"node": node_id, "timeout_ms": round(timeout * 1000)})
        return self._send(Call("POST", "/api/v1/cluster/drain", body=body, wait=timeout + 15))

    def cluster_add_node(self, address: str) -> R:
        """Bring the node listening at ``address`` (HOST:PORT) into the cluster."""
        body = {"address": address}
        return self._send(Call("POST", "/api/v1/cluster/nodes", body=body, wait=20.0))

    def cluster_stop(self, *, drain: float | None = None) -> R:
        """Stop every reachable node in order, the one asked last (``cluster stop --all``)."""
        body = {} if drain is None else {"drain_timeout_ms": round(drain * 1000)}
        return self._send(
            Call("POST", "/api/v1/cluster/stop", body=body, wait=(drain or 30.0) + 60.0)
        )

    def cluster_rebuild(self, node_id: str) -> R:
        """Have ``node_id`` take back from its peers what it lost with its data directory."""
        body = {"node": node_id}
        return self._send(Call("POST", "/api/v1/cluster/rebuild", body=body, wait=120.0))

    def cluster_remove(self, node_id: str) -> R:
        """Force a failed member out of the cluster."""
        body = {"node": node_id, "force": True}
        return self._send(Call("POST", "/api/v1/cluster/remove", body=body))

    # -- diagnostics (caxton.diagnostics; the support bundle: iter_bytes) --------------

    def cluster_performance(self, *, probe: bool = True) -> R:
        """The targets table measured on every node (``probe``: send a routing probe)."""
        query = {"probe": "true" if probe else "false"}
        return self._send(
            Call("GET", "/api/v1/diagnostics/performance", query, wait=60.0, idempotent=True)
        )

    def slow_agents(self, threshold_ms: int = 100, *, node_id: str | None = None) -> R:
        query = {"threshold_ms": threshold_ms, "node": node_id}
        return self._send(Call("GET", "/api/v1/diagnostics/agents", query, idempotent=True))

    def memory_stats(self, *, node_id: str | None = None) -> R:
        query = {"node": node_id}
        return self._send(Call("GET", "/api/v1/diagnostics/memory", query, idempotent=True))

    def memory_gc(self, *, aggressive: bool = False, node_id: str | None = None) -> R:
        body = _drop_none({"aggressive": aggressive, "node": node_id})
        return self._send(Call("POST", "/api/v1/diagnostics/memory/gc", body=body, wait=30.0))

    def trace_conversation(self, conversation_id: str) -> R:
        path = f"/api/v1/diagnostics/conversations/{conversation_id}"
        return self._send(Call("GET", path, idempotent=True))

    def error_cascade(self, last: float = 300.0) -> R:
        query = {"last": max(1, round(last))}
        return self._send(Call("GET", "/api/v1/diagnostics/errors", query, idempotent=True))

    def analyze_messages(self, pattern: str, last: float = 3600.0) -> R:
        """The routed messages and error events of the last ``last`` seconds, on every
        node, whose text the regular expression ``pattern`` finds."""
        query = {"pattern": pattern, "last": max(1, round(last))}
        return self._send(Call("GET", "/api/v1/diagnostics/messages", query, idempotent=True))

    def start_profile(
        self, seconds: float = 10.0, *, agent: str | None = None, node_id: str | None = None
    ) -> R:
        """Start a profile (202, ``profile_id``); read it with :meth:`profile_result`."""
        body = _drop_none({"seconds": seconds, "agent": agent, "node": node_id})
        return self._send(Call("POST", "/api/v1/diagnostics/profile", body=body))

    def profile_result(self, profile_id: str) -> R:
        path = f"/api/v1/diagnostics/profile/{profile_id}"
        return self._send(Call("GET", path, idempotent=True))

    def node_config(self, *, node_id: str | None = None) -> R:
        """A node's running configuration (secrets masked), defaults and sources."""
        query = {"node": node_id}
        return self._send(Call("GET", "/api/v1/diagnostics/config", query, idempotent=True))

    def cluster_analyze(self) -> R:
        return self._send(Call("GET", "/api/v1/diagnostics/analyze", idempotent=True))

    def cluster_analyze_gossip(self) -> R:
        return self._send(Call("GET", "/api/v1/diagnostics/gossip", idempotent=True))

    # -- anything else (plugin routes) -------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: Mapping[str, Any] | None = None,
        wait: float = 0.0,
    ) -> R:
        """Any route, e.g. one a plugin mounts; the decoded JSON answer."""
        idempotent = method.upper() in ("GET", "HEAD")
        return self._send(Call(method.upper(), path, dict(query or {}), body, wait, idempotent))
