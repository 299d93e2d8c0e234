"""One agent per name in the cluster: a new agent's name is claimed from a majority.

A deploy of a *new* agent (no agent id yet: not a failover, not a move, which carry
the agent's id) is refused with 409 naming the node when the registry shows an agent of
that name anywhere in the cluster. The registry is gossip, so two deploys of one name
on two nodes at the same moment would both see it free. So before the agent is
created, the deploying node *claims* the name from the known members (the quorum
lease's denominator: every member that has not left, failed ones included) with the
CONTROL op ``name``:

- a member **grants** the claim when its registry shows no agent of that name with
  another id and it has granted no other unexpired claim of that name; it then holds
  the grant until the agent appears in its registry (the registry refuses the name
  from then on, until the agent is removed), the claimant releases it (the deploy
  failed) or ``GRANT_TTL`` passes (the claimant died);
- it **refuses** naming the node that runs the name (``taken``) or the node whose claim
  it granted (``busy``).

The claimant creates the agent only with grants from a majority. Two majorities share
a member, and a member grants one claim at a time, so two claims of one name never
both win. A split vote (no claim has a majority, possible from four members up) is
settled by the ballot, ``(wall clock ns, node id)``: a claimant told of a lower
ballot gives its grants back and answers 409; the lowest keeps its grants and asks
the others again until they are released, so exactly one of concurrent deploys wins
(clocks matter only for which one; safety does not rest on them).

A cluster whose transport authenticates no peer (plaintext without gossip keys, local
development only) cannot authenticate claims: there the registry check alone applies.
Design record: docs/design/0010-one-agent-per-name.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from caxton.cluster import wire
from caxton.cluster.lease import quorum_of
from caxton.cluster.placement import error_answer
from caxton.cluster.registry import AgentEntry
from caxton.drivers.transport import Frame
from caxton.errors import CaxtonError, Conflict, ServiceUnavailable, TransportError

if TYPE_CHECKING:
    from caxton.cluster.service import Cluster

__all__ = ["OPS", "NameClaims", "NameTaken"]

log = logging.getLogger("caxton.cluster")

#: The control ops this module answers.
OPS = frozenset({"name"})
#: How long a member holds a grant whose agent has not appeared in its registry.
GRANT_TTL = 120.0
#: How long a claimant asks again for grants held by higher ballots.
CLAIM_PATIENCE = 5.0
#: The answer wait of one claim or release request.
CLAIM_TIMEOUT = 5.0

Ballot = tuple[int, str]


class NameTaken(Conflict):
    """The name is taken (or being claimed) on another node."""

    error = "Name taken"


@dataclass
class _Grant:
    agent_id: str
    node_id: str
    ballot: Ballot
    expires: float


def describe(entry: AgentEntry) -> str:
    return f"an agent named '{entry.name}' runs on node {entry.node_id} ({entry.state})"


class NameClaims:
    """This node's side of name claims: the grants it holds, the claims it makes."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._grants: dict[str, _Grant] = {}

    # -- what a deploy asks -------------------------------------------------------------

    def holder(self, name: str, agent_id: str = "") -> AgentEntry | None:
        """The registry's entry of another agent named ``name``, anywhere."""
        for entry in self.cluster.registry.lookup(name):
            if entry.agent_id != agent_id:
                return entry
        return None

    async def gone(self, name: str, agent_ids: set[str], timeout: float = 5.0) -> None:
        """Wait until this node's registry shows none of ``agent_ids`` under ``name``
        (removed elsewhere: the tombstone is a push away)."""
        deadline = self._now() + timeout
        while self._now() < deadline:
            if not any(e.agent_id in agent_ids for e in self.cluster.registry.lookup(name)):
                return
            await asyncio.sleep(0.02)

    def check(self, name: str) -> None:
        """Raise :class:`NameTaken` naming the node when ``name`` runs somewhere."""
        entry = self.holder(name)
        if entry is not None:
            raise self._taken(describe(entry))

    async def claim(self, name: str, agent_id: str) -> set[str]:
        """Claim ``name`` for the new agent ``agent_id`` from a majority of the known
        members and return who granted it (:meth:`release` them if the deploy fails).

        Raises :class:`NameTaken` (409) naming the node that runs the name or deploys it,
        :class:`~caxton.errors.ServiceUnavailable` (503) when no majority answers."""
        self.check(name)
        granted: set[str] = set()
        if self.cluster.failover.trust.mode is None:
            return granted  # nothing to authenticate claims with: the registry check only
        ballot: Ballot = (time.time_ns(), self.cluster.node_id)
        known = self.cluster.lease.known()
        quorum = quorum_of(known, self.cluster.lease.quorum_size)
        deadline = self._now() + CLAIM_PATIENCE
        while True:
            refusals = await self._ask_all(name, agent_id, ballot, known, granted)
            if len(granted) >= quorum:
                return granted
            # A member's registry may be a push behind or ahead of ours: what decides is
            # ours (wait for it) and the ballots of claims in progress.
            taken = self.holder(name, agent_id)
            lower = [r for r in refusals if r[0] == "busy" and tuple(r[2]) < ballot]
            if taken is None and not lower and refusals and self._now() < deadline:
                await asyncio.sleep(0.05)  # higher ballots give their grants back: ask again
                continue
            await self.release(name, agent_id, granted)
            if taken is None and lower:
                taken = await self._winner(name, agent_id, deadline)
            if taken is not None:
                raise self._taken(describe(taken))
            for kind, node_id, _ in lower or refusals:
                why = "runs on" if kind == "taken" else "is being deployed on"
                raise self._taken(f"an agent named '{name}' {why} node {node_id}")
            raise ServiceUnavailable(
                f"could not claim the name '{name}': {len(granted)} of {len(known)} "
                f"members granted it, a majority is {quorum}; retry (or check "
                f"caxton cluster status)"
            )

    async def _winner(self, name: str, agent_id: str, deadline: float) -> AgentEntry | None:
        """After losing to a claim in progress: the agent it deploys, once the registry
        shows it (so the refusal names the node that won), or None by ``deadline``."""
        while self._now() < deadline:
            entry = self.holder(name, agent_id)
            if entry is not None:
                return entry
            await asyncio.sleep(0.02)
        return None

    @staticmethod
    def _taken(what: str) -> NameTaken:
        return NameTaken(
            f"{what}; one agent per name in the cluster: remove it first, or deploy with "
            f'--replace ("replace": true)'
        )

    async def release(self, name: str, agent_id: str, granted: set[str]) -> None:
        """Give back the grants of a claim whose deploy did not happen."""
        self._release(name, agent_id)
        peers = [n for n in granted if n != self.cluster.node_id]
        if peers:
            await asyncio.gather(
                *(self._request(n, "release", name, agent_id, None) for n in peers),
                return_exceptions=True,
            )

    async def _ask_all(
        self, name: str, agent_id: str, ballot: Ballot, known: Sequence[str], granted: set[str]
    ) -> list[tuple[str, str, Sequence[Any]]]:
        """Ask every member that has not granted yet; add the grants, return refusals."""
        asking = [n for n in known if n not in granted]
        answers = await asyncio.gather(
            *(self._ask(n, name, agent_id, ballot) for n in asking), return_exceptions=True
        )
        refusals = []
        for node_id, answer in zip(asking, answers, strict=True):
            if answer == ["ok"]:
                granted.add(node_id)
            elif isinstance(answer, list) and len(answer) == 3 and answer[0] in ("taken", "busy"):
                refusals.append((str(answer[0]), str(answer[1]), answer[2] or (0, "")))
        return refusals

    async def _ask(self, node_id: str, name: str, agent_id: str, ballot: Ballot) -> Any:
        if node_id == self.cluster.node_id:
            return self.grant(name, agent_id, node_id, ballot)
        return await self._request(node_id, "claim", name, agent_id, list(ballot))

    async def _request(
        self, node_id: str, action: str, name: str, agent_id: str, ballot: Any
    ) -> Any:
        member = self.cluster._live(node_id)
        if member is None:
            return None  # failed (it still counts in the denominator) or a seed address
        body = {"action": action, "name": name, "agent_id": agent_id, "ballot": ballot}
        sealed = self.cluster.failover.trust.seal(body)
        try:
            return await self.cluster._control(member.address, CLAIM_TIMEOUT, "name", sealed)
        except (TransportError, CaxtonError) as exc:
            log.debug("name claim to %s: %s", node_id, exc)
            return None

    # -- what a member answers ----------------------------------------------------------

    def grant(self, name: str, agent_id: str, node_id: str, ballot: Ballot) -> list[Any]:
        """This member's vote on a claim: ``["ok"]``, ``["taken", node, nil]`` or
        ``["busy", node, ballot]``."""
        entry = self.holder(name, agent_id)
        if entry is not None:
            return ["taken", entry.node_id, None]
        held = self._grants.get(name)
        now = self._now()
        if held is not None and held.agent_id != agent_id and held.expires > now:
            return ["busy", held.node_id, list(held.ballot)]
        if len(self._grants) > 1000:  # forget expired grants now and then
            self._grants = {n: g for n, g in self._grants.items() if g.expires > now}
        self._grants[name] = _Grant(agent_id, node_id, ballot, now + GRANT_TTL)
        return ["ok"]

    def settle(self, name: str, agent_id: str) -> None:
        """The registry shows (or no longer shows) ``agent_id``: a grant for it is done
        with; from now on the registry holds the name, until the agent is removed."""
        self._release(name, agent_id)

    def _release(self, name: str, agent_id: str) -> None:
        held = self._grants.get(name)
        if held is not None and held.agent_id == agent_id:
            del self._grants[name]

    def on_control(self, frame: Frame, args: Sequence[Any]) -> bytes:
        """Answer a ``name`` op (sealed ``{action, name, agent_id, ballot}``)."""
        answer: Any
        try:
            sender, body = self.cluster.failover.trust.open(
                "name", frame.sender, args[0] if args else None
            )
            name, agent_id = str(body["name"]), str(body["agent_id"])
            if body.get("action") == "release":
                self._release(name, agent_id)
                answer = ["ok"]
            else:
                ballot = body.get("ballot") or [0, sender]
                answer = self.grant(name, agent_id, sender, (int(ballot[0]), str(ballot[1])))
        except CaxtonError as exc:
            answer = error_answer(exc)
        except (KeyError, TypeError, ValueError, IndexError):
            answer = ["error", 400, "Validation failed", "malformed name claim", None]
        return wire.pack(answer)

    def _now(self) -> float:
        return self.cluster._get_loop().time()
