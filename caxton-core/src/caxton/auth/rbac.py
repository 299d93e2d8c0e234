"""Roles and permissions: what each role may do, default deny.

The permissions are those REST routes declare (:data:`caxton.api.permissions.PERMISSIONS`);
the four roles below are the defaults, and ``[security.roles]`` replaces the
permissions of a role or adds a role::

    [security.roles]
    operator = ["read", "deploy", "update", "remove", "send", "metrics"]
    auditor = ["read", "audit"]
    root = ["*"]

An identity holds roles; it may do what any of its roles allows, and nothing else: an
unknown role grants nothing, an unknown permission is granted to nobody.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from caxton.api.permissions import PERMISSIONS
from caxton.errors import ConfigError, Forbidden

__all__ = ["ALL", "CLI_PERMISSIONS", "DEFAULT_ROLES", "LOCAL", "Roles"]

#: In ``[security.roles]``: every permission.
ALL = "*"

DEFAULT_ROLES: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "admin": frozenset(PERMISSIONS),
        "operator": frozenset({"read", "deploy", "update", "remove", "send", "metrics", "cluster"}),
        "developer": frozenset({"read", "deploy", "update", "send", "metrics"}),
        "viewer": frozenset({"read", "metrics"}),
    }
)


#: In :data:`CLI_PERMISSIONS`: the command works on this host's files, not through the API
#: (whoever can read the node's config and data directory may run it).
LOCAL = "local"

#: The permission each core CLI command needs on the node it drives (the strongest
#: route it calls), or :data:`LOCAL`. A test walks the command tree and fails on any
#: command missing here.
CLI_PERMISSIONS: Mapping[str, str] = MappingProxyType(
    {
        "deploy": "deploy",
        "agents list": "read",
        "agent get": "read",
        "agent start": "update",
        "agent stop": "update",
        "agent suspend": "update",
        "agent resume": "update",
        "agent update": "update",
        "agent move": "update",
        "cluster rebalance": "cluster",
        "cluster drain": "cluster",
        "cluster add-node": "cluster",
        "agent remove": "remove",
        "agent state list": "read",
        "agent state get": "update",
        "agent state set": "update",
        "agent state delete": "update",
        "message send": "send",
        "queue stats": "metrics",
        "queue drain": "cluster",
        "resources": "metrics",
        "emergency stop": "cluster",
        "emergency start": "cluster",
        "agents suspend": "cluster",
        "agents resume": "cluster",
        "circuit-breaker activate": "cluster",
        "circuit-breaker reset": "cluster",
        "circuit-breaker status": "read",
        "cluster backup": "cluster",
        "cluster restore": LOCAL,
        "cluster isolate": "cluster",
        "cluster rejoin": "cluster",
        "cluster shed-load": "cluster",
        "cluster stop": "cluster",
        "cluster start": "read",
        "cluster rebuild": "cluster",
        "cluster members": "read",
        "cluster status": "read",
        "cluster detect-partition": "read",
        "cluster watch": "read",
        "cluster ping": "read",
        "cluster verify": "read",
        "cluster verify-auth": "read",
        "security verify-auth": "read",
        "cluster leave": "cluster",
        "cluster remove": "cluster",
        "cluster rolling-restart": "cluster",
        "cluster upgrade start": "cluster",
        "cluster upgrade status": "read",
        "cluster upgrade rollback": "cluster",
        "logs": "read",
        "cluster performance": "metrics",
        "cluster analyze": "metrics",
        "cluster analyze-gossip": "metrics",
        "agents slow": "metrics",
        "memory stats": "metrics",
        "memory gc": "cluster",
        "trace": "read",
        "analyze messages": "read",
        "profile": "cluster",
        "debug dump": "cluster",
        "config diff": "cluster",
        "cluster up": LOCAL,
        "cluster down": LOCAL,
        "cluster token create": LOCAL,
        "cluster token list": LOCAL,
        "cluster token revoke": LOCAL,
        "backup create": "cluster",
        "backup list": "cluster",
        "backup verify": LOCAL,
        "backup restore": LOCAL,
        "config show": LOCAL,
        "config validate": LOCAL,
        "plugins": LOCAL,
        "plugin new": LOCAL,
        "server start": LOCAL,
        "security init-ca": LOCAL,
        "security issue-cert": LOCAL,
        "security cert-status": LOCAL,
        "security rotate-certs": LOCAL,
        "security api-key create": LOCAL,
        "security api-key list": LOCAL,
        "security api-key revoke": LOCAL,
        "security token create": LOCAL,
    }
)


class Roles:
    """The role table of a node: ``role -> permissions``."""

    def __init__(self, table: Mapping[str, Iterable[str]] = DEFAULT_ROLES) -> None:
        self.table: dict[str, frozenset[str]] = {
            role: frozenset(perms) for role, perms in table.items()
        }

    @classmethod
    def from_config(cls, overrides: Mapping[str, Any]) -> Roles:
        """The defaults with ``security.roles`` applied; :class:`ConfigError` if invalid."""
        table = dict(DEFAULT_ROLES)
        for role, given in overrides.items():
            if not isinstance(given, list) or not all(isinstance(p, str) for p in given):
                raise ConfigError(
                    f"security.roles.{role}: expected a list of permissions, got {given!r}"
                )
            unknown = sorted(set(given) - set(PERMISSIONS) - {ALL})
            if unknown:
                raise ConfigError(
                    f"security.roles.{role}: unknown permission(s) {', '.join(unknown)}; "
                    f"known: {', '.join(PERMISSIONS)} (or '*' for all)"
                )
            table[role] = frozenset(PERMISSIONS) if ALL in given else frozenset(given)
        return cls(table)

    def permissions(self, roles: Iterable[str]) -> frozenset[str]:
        granted: frozenset[str] = frozenset()
        for role in roles:
            granted |= self.table.get(role, frozenset())
        return granted

    def allows(self, roles: Iterable[str], permission: str) -> bool:
        return permission in self.permissions(roles)

    def check(self, name: str, roles: Iterable[str], permission: str) -> None:
        """:class:`Forbidden` unless ``roles`` grant ``permission``."""
        roles = sorted(roles)
        if self.allows(roles, permission):
            return
        held = ", ".join(roles) or "none"
        may = sorted(role for role, perms in self.table.items() if permission in perms)
        raise Forbidden(
            f"{name} (roles: {held}) lacks the '{permission}' permission; "
            f"roles that have it: {', '.join(may) or 'none'}"
        )

    def check_role(self, role: str) -> str:
        """``role`` if the table knows it, else :class:`ConfigError` listing the roles."""
        if role not in self.table:
            raise ConfigError(
                f"unknown role '{role}'; roles: {', '.join(sorted(self.table))} "
                f"(add roles under [security.roles])"
            )
        return role
