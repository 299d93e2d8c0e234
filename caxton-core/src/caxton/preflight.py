"""What ``caxton server start`` checks before it binds anything.

:func:`preflight` runs every check of a node's configuration that start would fail on
(API exposure and auth, drivers and their sections, the API's TLS material, the
cluster's mTLS or plaintext choice and its certificates, the auth chain, the agent
policy) and gathers the warnings about keys that do nothing
(:mod:`caxton.inert_keys`). :meth:`caxton.node.Node.start` and ``caxton config
validate`` both call it, so validate says "valid" exactly when start would get past
its checks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from caxton.errors import CaxtonError, ConfigError
from caxton.inert_keys import inert_key_warnings

if TYPE_CHECKING:
    from caxton.node import Node

__all__ = ["Preflight", "preflight"]


@dataclass
class Preflight:
    """What :func:`preflight` found: ``problems`` stop start, ``warnings`` do not."""

    errors: list[CaxtonError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return [str(error) for error in self.errors]

    def raise_problems(self) -> None:
        """Raise the problem (its own error type), or a :class:`ConfigError` naming all."""
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise ConfigError(f"{len(self.errors)} problems: " + "; ".join(self.problems))


def preflight(node: Node) -> Preflight:
    """Run every check start runs before it binds; never raises for a config problem."""
    report = Preflight()
    checks: list[Callable[[], object]] = [
        node.check_exposure,
        node.check_drivers,
        lambda: _api_tls(node),
        lambda: _cluster_security(node),
        lambda: _auth_chain(node),
        lambda: _agent_policy(node),
    ]
    for check in checks:
        try:
            check()
        except CaxtonError as exc:
            report.errors.append(exc)
    # after check_drivers: the selected drivers' sections are in the config now
    report.warnings = inert_key_warnings(node.config)
    return report


def _api_tls(node: Node) -> None:
    from caxton.api.server import api_ssl_context

    api_ssl_context(node.config)


def _cluster_security(node: Node) -> None:
    """mTLS or plaintext, the gossip keys, and the node's certificates load."""
    if not node.clustered:
        return
    from caxton.security.node_tls import supplies_tls

    if supplies_tls(node, node.join_token):
        return  # a CA made at --bootstrap, a join token, or certs/ in the data directory
    from caxton.security.tls import server_context
    from caxton.transport.settings import TransportSettings

    settings = TransportSettings.from_config(node.config, node.node_id)
    if settings.tls is not None:
        server_context(settings.tls)


def _auth_chain(node: Node) -> None:
    from caxton.auth.chain import auth_chain_names
    from caxton.auth.rbac import Roles

    security = node.config["security"]
    if security["auth_enabled"]:
        Roles.from_config(security["roles"])
        auth_chain_names(node.config)


def _agent_policy(node: Node) -> None:
    from caxton.auth.agent_policy import AgentPolicy

    AgentPolicy.from_config(node.config)
