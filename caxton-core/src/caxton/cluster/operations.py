"""Operator procedures that span the cluster, as control operations.

``caxton cluster backup`` and the emergency commands act on every reachable node at
once: the node the operator asks sends one sealed control request to each member (and
runs it itself), and reports each node's answer, so every node confirms what it did.

============  ==========================================  ================================
op            request (sealed, see cluster.trust)          answer
============  ==========================================  ================================
``backup``    ``{type}``                                   ``["ok", manifest + size]``
``backup-read`` ``{id, offset, length}``                   ``["ok", bytes]`` (a chunk)
``emergency`` ``{action, ...}``                            ``["ok", what this node did]``
``diag``      ``{report, ...arguments}``                   ``["ok", the node's report]``
``view``      ``{view, args}``                             ``["ok", the node's view]``
``cluster-stop`` ``{phase, ...}``                          ``["ok", what this node did]``
``rebuild``   ``{}``                                        ``["ok", the rebuild report]``
``rebuild-holdings`` ``{}``                                 ``["ok", the asker's replicas]``
``rebuild-module`` ``{sha256}``                             ``["ok", bytes]``
============  ==========================================  ================================

Errors are ``["error", status, error, message, details]`` as for ``deploy``. The
actions of ``emergency`` are those of :func:`caxton.emergency.apply`; the reports of
``diag`` those of :data:`caxton.diagnostics.local.REPORTS`; the views of ``view``
those of :data:`caxton.cluster.views.VIEWS` (read-only, for the console); the phases of
``cluster-stop`` those of :mod:`caxton.cluster.shutdown`; ``rebuild*``:
:mod:`caxton.cluster.rebuild`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from caxton.cluster import rebuild, shutdown, views, wire
from caxton.cluster.placement import RemoteError, error_answer
from caxton.errors import CaxtonError, NotFound, ValidationError

if TYPE_CHECKING:
    from caxton.cluster.service import Cluster
    from caxton.drivers.transport import Frame

__all__ = ["OPS", "ClusterOperations"]

log = logging.getLogger("caxton.cluster.operations")

#: The control ops :class:`ClusterOperations` answers.
OPS = frozenset({"backup", "backup-read", "emergency", "diag", "view"}) | shutdown.OPS | rebuild.OPS
#: Bytes of a backup sent per ``backup-read`` (well under transport.max_frame_size).
CHUNK = 4 * 1024 * 1024
#: Seconds a node may take to make its backup.
BACKUP_TIMEOUT = 600.0
#: Seconds a node may take for an emergency action (stopping agents, a dump).
EMERGENCY_TIMEOUT = 120.0
READ_TIMEOUT = 30.0


class ClusterOperations:
    """Answers :data:`OPS` and sends them to every reachable member."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.node = cluster.node

    # -- answering ------------------------------------------------------------------

    async def on_control(self, frame: Frame, op: str, args: Sequence[Any]) -> bytes:
        answer: Any
        try:
            sender, body = self.cluster.failover.trust.open(
                op, frame.sender, args[0] if args else None
            )
            if not isinstance(body, dict):
                raise ValidationError(f"malformed '{op}' request")
            answer = ["ok", await self.run(op, body, sender)]
        except CaxtonError as exc:
            log.warning("cluster operation '%s' from %s failed: %s", op, frame.sender, exc)
            answer = error_answer(exc)
        return wire.pack(answer)

    async def run(self, op: str, body: dict[str, Any], sender: str) -> Any:
        """Do ``op`` here (for a peer, or for this node's own part of a fan-out)."""
        if op == "backup":
            backups = self.node.backups
            assert backups is not None
            path, manifest = await backups.create(body.get("type"))
            return {**manifest.to_dict(), "size": path.stat().st_size}
        if op == "backup-read":
            return await asyncio.to_thread(self._read, body)
        if op == "diag":
            from caxton.diagnostics.local import run

            return await run(self.node, body)
        if op == "view":
            return await views.run(self.node, body)
        if op in shutdown.OPS:
            if sender != self.cluster.node_id:
                self._audit(f"cluster_stop_{body.get('phase')}", sender)
            return await shutdown.run(self.node, body, sender)
        if op in rebuild.OPS:
            if op == "rebuild" and sender != self.cluster.node_id:
                self._audit("cluster_rebuild", sender)
            return await rebuild.run(self.node, op, body, sender)
        from caxton.emergency import apply

        log.warning("emergency action %r asked by %s", body.get("action"), sender)
        result = await apply(self.node, body)
        if sender != self.cluster.node_id:
            self._audit(f"emergency_{body.get('action')}", sender)
        return result

    def _audit(self, action: str, sender: str) -> None:
        """Record an operation a peer asked for in this node's audit log (the REST call
        that started it is in the asking node's)."""
        guard = self.node.context.services.get("auth")
        audit = getattr(guard, "audit", None)
        if audit is not None:
            audit.record(action, "success", identity=f"node:{sender}", source="cluster")

    def _read(self, body: dict[str, Any]) -> bytes:
        backups = self.node.backups
        assert backups is not None
        path = backups.path_of(str(body.get("id")))
        offset, length = int(body.get("offset", 0)), min(int(body.get("length", CHUNK)), CHUNK)
        with path.open("rb") as f:
            f.seek(offset)
            return f.read(length)

    # -- asking ---------------------------------------------------------------------

    async def ask(self, node_id: str, op: str, body: dict[str, Any], timeout: float) -> Any:
        """``op`` on ``node_id`` (this node included); its answer, or a CaxtonError."""
        if node_id == self.cluster.node_id:
            return await self.run(op, body, node_id)
        member = self.cluster._live(node_id)
        if member is None:
            raise NotFound(f"node {node_id} is not a reachable member of the cluster")
        answer = await self.cluster._control(
            member.address, timeout, op, self.cluster.failover.trust.seal(body)
        )
        if isinstance(answer, list) and len(answer) == 2 and answer[0] == "ok":
            return answer[1]
        if isinstance(answer, list) and len(answer) == 5 and answer[0] == "error":
            _, status, error, message, details = answer
            status = int(status) if isinstance(status, int) and 400 <= status < 600 else 502
            raise RemoteError(status, str(error), f"node '{node_id}': {message}", details)
        raise RemoteError(502, "Bad answer", f"node '{node_id}' gave a malformed answer to {op}")

    def reachable(self) -> list[str]:
        """This node and every member it can reach, this node first."""
        return [self.cluster.node_id, *(m.node_id for m in self.cluster._peers())]

    async def fan_out(
        self,
        op: str,
        body: dict[str, Any],
        timeout: float,
        nodes: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """``op`` on every reachable node at once: node id -> answer, or the error text."""
        targets = list(nodes) if nodes is not None else self.reachable()

        async def one(node_id: str) -> Any:
            try:
                return await self.ask(node_id, op, body, timeout)
            except CaxtonError as exc:
                return exc

        answers = await asyncio.gather(*(one(n) for n in targets))
        return dict(zip(targets, answers, strict=True))

    async def fetch_backup(
        self, node_id: str, backup_id: str, size: int, write: Callable[[bytes], Awaitable[None]]
    ) -> None:
        """Read ``node_id``'s backup ``backup_id`` chunk by chunk into ``write``."""
        offset = 0
        while offset < size:
            chunk = await self.ask(
                node_id,
                "backup-read",
                {"id": backup_id, "offset": offset, "length": CHUNK},
                READ_TIMEOUT,
            )
            if not isinstance(chunk, bytes) or not chunk:
                raise RemoteError(
                    502, "Bad answer", f"node '{node_id}' sent no data at offset {offset}"
                )
            await write(chunk)
            offset += len(chunk)
