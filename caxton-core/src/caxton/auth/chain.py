"""The node's guard: its auth chain, its role table and its audit log.

:func:`start_security` builds it when the node starts (``security.auth_enabled``), and
the agent policy whatever the setting. The REST API's ``authenticate`` middleware
(:mod:`caxton.api.middleware`) asks :meth:`Guard.authenticate` who is calling and
:meth:`Guard.authorize` whether they may.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caxton.auth.agent_policy import AgentPolicy
from caxton.auth.audit import AuditLog
from caxton.auth.rbac import Roles
from caxton.drivers.auth import AuthDriver, Credentials, Identity
from caxton.errors import AuthError, CaxtonError, ConfigError, ServiceUnavailable
from caxton.plugins import error_line

if TYPE_CHECKING:
    from caxton.config import Config
    from caxton.node import Node

__all__ = ["Guard", "auth_chain_names", "start_security"]

log = logging.getLogger("caxton.auth")

#: What to send, by chain member, for the 401 hint.
_HINTS = {"api-key": "an API key in the {header} header", "jwt": "Authorization: Bearer <token>"}


class Guard:
    """Who is calling (the chain, in order) and what they may do (the roles)."""

    def __init__(
        self,
        drivers: Sequence[AuthDriver],
        roles: Roles,
        *,
        names: Sequence[str] = (),
        audit: AuditLog | None = None,
        api_key_header: str = "X-API-Key",
    ) -> None:
        self.drivers = list(drivers)
        self.names = list(names) or [type(d).__name__ for d in self.drivers]
        self.roles = roles
        self.audit = audit
        hints = [_HINTS.get(n, f"'{n}' credentials") for n in self.names]
        self.hint = " or ".join(hints).format(header=api_key_header) or "credentials"
        #: The ``WWW-Authenticate`` value of a 401.
        self.challenge = (
            ", ".join(
                'Bearer realm="caxton"'
                if n == "jwt"
                else f'ApiKey realm="caxton", header="{api_key_header}"'
                for n in dict.fromkeys(n if n == "jwt" else "api-key" for n in self.names)
            )
            or 'ApiKey realm="caxton"'
        )

    async def authenticate(self, credentials: Credentials) -> Identity:
        """The identity of the first driver that recognises ``credentials``.

        A driver's :class:`AuthError` (credentials of its kind, but invalid) ends the
        walk: they are never offered to the next driver. No driver recognising them is
        an :class:`AuthError` too. A driver that fails otherwise is a 503, not a pass.
        """
        for name, driver in zip(self.names, self.drivers, strict=True):
            try:
                identity = await driver.authenticate(credentials)
            except CaxtonError:
                raise
            except Exception as exc:
                log.exception("auth driver '%s' failed", name)
                raise ServiceUnavailable(
                    f"auth driver '{name}' failed: {error_line(exc)}; the node log has details"
                ) from exc
            if identity is not None:
                if not identity.driver:
                    identity = Identity(identity.name, identity.roles, name, identity.attributes)
                return identity
        raise AuthError(f"authentication required: send {self.hint}")

    def authorize(self, identity: Identity, permission: str) -> None:
        """:class:`~caxton.errors.Forbidden` unless one of the identity's roles allows."""
        self.roles.check(identity.name, identity.roles, permission)

    def close(self) -> None:
        if self.audit is not None:
            self.audit.close()


def audit_log_for(node: Node) -> AuditLog | None:
    settings = node.config["security.audit"]
    if not settings["enabled"]:
        return None
    return AuditLog(
        Path(settings["path"] or node.data_dir / "audit.log").expanduser(),
        max_bytes=settings["max_size"],
        backups=settings["backups"],
    )


def auth_chain_names(config: Config) -> list[str]:
    """The auth drivers of ``plugins.auth``, in order; none is a :class:`ConfigError`."""
    names = list(config["plugins"]["auth"])
    if not names:
        raise ConfigError(
            "security.auth_enabled is true but plugins.auth is empty: list the auth "
            'drivers to use, e.g. plugins.auth = ["api-key"]'
        )
    return names


async def start_security(node: Node, stack: contextlib.AsyncExitStack) -> list[Any]:
    """Start the agent policy and, with ``security.auth_enabled``, the auth chain.

    Puts ``agent_policy`` and (with auth) ``auth`` (the :class:`Guard`) in
    ``node.context.services``; returns the started auth drivers, in chain order.
    Call after the store and the router are up, before the agents and the API.
    """
    policy = AgentPolicy.from_config(node.config)
    await policy.load(node.store)
    policy.attach(node.router)
    node.context.services["agent_policy"] = policy
    security = node.config["security"]
    if not security["auth_enabled"]:
        return []
    roles = Roles.from_config(security["roles"])
    names = auth_chain_names(node.config)
    drivers = node.host.create_chain("auth", names, node.config, node.context)
    for name, driver in zip(names, drivers, strict=True):
        await node.start_driver("auth", name, driver)
    guard = Guard(
        drivers,
        roles,
        names=names,
        audit=audit_log_for(node),
        api_key_header=security["api_key_header"],
    )
    stack.callback(guard.close)
    node.context.services["auth"] = guard
    return drivers
