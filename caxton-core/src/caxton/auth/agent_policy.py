"""Agent-to-agent policy: per-agent allow-lists of who may message it.

An agent's allow-list holds sender names or shell-style patterns (``frontend-*``,
``client-*`` for REST clients). It comes from the deploy request
(``"allowed_senders": [...]``, kept in the state store) or else from config::

    [security.agent_policy.allowed_senders]
    billing = ["checkout", "ops-*"]
    "vault-*" = ["keeper"]

The router asks :meth:`AgentPolicy.check` about each message for an agent on this
node; a sender not on the receiver's list gets a ``refuse`` from the receiver (or, if
the sender is not an agent here, the send fails with 403). An agent without a list
accepts every sender.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from caxton.auth.schema import setup_schema
from caxton.errors import ConfigError, ValidationError
from caxton.messaging.message import Message
from caxton.store import Store

__all__ = ["AgentPolicy", "Gated"]

#: Most patterns in one allow-list.
MAX_SENDERS = 256


class Gated(Protocol):
    """What the policy plugs into: the router's ``gate``."""

    gate: Any


class _Rule:
    __slots__ = ("matcher", "senders")

    def __init__(self, senders: Sequence[str]) -> None:
        self.senders = tuple(senders)
        union = "|".join(fnmatch.translate(s) for s in self.senders) or r"(?!)"
        self.matcher = re.compile(union)

    def allows(self, sender: str) -> bool:
        return self.matcher.match(sender) is not None


def check_senders(senders: Any, where: str) -> list[str]:
    """``senders`` as a list of non-empty strings; :class:`ValidationError` otherwise."""
    if not isinstance(senders, list) or not all(isinstance(s, str) and s for s in senders):
        raise ValidationError(f"{where} must be a list of agent names or patterns")
    if len(senders) > MAX_SENDERS:
        raise ValidationError(f"{where} has {len(senders)} entries; at most {MAX_SENDERS}")
    return [s.strip() for s in senders]


class AgentPolicy:
    """The allow-lists of the agents of one node."""

    def __init__(self, configured: Mapping[str, Sequence[str]] | None = None) -> None:
        #: From config: agent name or pattern -> rule, in config order.
        self._configured: dict[str, _Rule] = {}
        self._configured_patterns: list[tuple[str, _Rule]] = []
        for agent, senders in (configured or {}).items():
            try:
                rule = _Rule(check_senders(senders, f"allowed senders of {agent!r}"))
            except ValidationError as exc:
                raise ConfigError(f"security.agent_policy.allowed_senders: {exc}") from None
            if any(c in agent for c in "*?["):
                self._configured_patterns.append((agent, rule))
            else:
                self._configured[agent] = rule
        #: From deploy requests: agent name -> rule.
        self._deployed: dict[str, _Rule] = {}
        self._store: Store | None = None
        self._targets: list[Gated] = []

    @classmethod
    def from_config(cls, config: Any) -> AgentPolicy:
        return cls(config["security.agent_policy"]["allowed_senders"])

    def __bool__(self) -> bool:
        return bool(self._configured or self._configured_patterns or self._deployed)

    # -- persistence ------------------------------------------------------------------

    async def load(self, store: Store) -> None:
        """Read the allow-lists given at deploy; later changes are written to ``store``."""
        await setup_schema(store)
        rows = await store.connection.execute_fetchall("SELECT agent, senders FROM agent_policies")
        for agent, senders in rows:
            self._deployed[str(agent)] = _Rule(json.loads(senders))
        self._store = store
        self._update_targets()

    def attach(self, target: Gated) -> None:
        """Make ``target`` (the router) consult this policy while it has any rule."""
        self._targets.append(target)
        self._update_targets()

    def _update_targets(self) -> None:
        gate = self.check if self else None
        for target in self._targets:
            target.gate = gate

    # -- rules --------------------------------------------------------------------------

    def set(self, agent: str, senders: Iterable[str] | None) -> None:
        """Give ``agent`` its own allow-list (None: back to the configured one, if any)."""
        if senders is None:
            self._deployed.pop(agent, None)
            if self._store is not None:
                self._store.enqueue("DELETE FROM agent_policies WHERE agent = ?", (agent,))
        else:
            given = list(senders) if isinstance(senders, tuple) else senders
            listed = check_senders(given, "allowed_senders")
            self._deployed[agent] = _Rule(listed)
            if self._store is not None:
                self._store.enqueue(
                    "INSERT OR REPLACE INTO agent_policies (agent, senders) VALUES (?, ?)",
                    (agent, json.dumps(listed)),
                )
        self._update_targets()

    def deployed_senders(self, agent: str) -> tuple[str, ...] | None:
        """The allow-list given when ``agent`` was deployed, if any."""
        rule = self._deployed.get(agent)
        return None if rule is None else rule.senders

    def allowed_senders(self, agent: str) -> tuple[str, ...] | None:
        """The allow-list that applies to ``agent``; None when it accepts everyone."""
        rule = self._rule(agent)
        return None if rule is None else rule.senders

    def _rule(self, agent: str) -> _Rule | None:
        rule = self._deployed.get(agent) or self._configured.get(agent)
        if rule is None:
            for pattern, candidate in self._configured_patterns:
                if fnmatch.fnmatchcase(agent, pattern):
                    return candidate
        return rule

    def allows(self, sender: str, receiver: str) -> bool:
        rule = self._rule(receiver)
        return rule is None or rule.allows(sender)

    def check(self, message: Message) -> str | None:
        """Why ``message`` may not reach its receiver, or None when it may."""
        rule = self._rule(message.receiver)
        if rule is None or rule.allows(message.sender):
            return None
        return (
            f"agent {message.receiver} does not accept messages from {message.sender} "
            f"(allowed senders: {', '.join(rule.senders) or 'none'})"
        )
