"""The API's settings, read once from the node's config."""

from __future__ import annotations

from dataclasses import dataclass

from caxton.config import Config

__all__ = ["ApiSettings"]


@dataclass(frozen=True)
class ApiSettings:
    """What the middlewares and handlers need from ``[networking]`` and ``[security]``."""

    #: Largest request body, bytes (``networking.max_body_size``).
    max_body_size: int = 16 * 1024 * 1024
    #: Seconds a client has to send its request body (``networking.request_timeout``).
    body_timeout: float = 60.0
    #: Seconds from accepting a connection until its first request head must be
    #: complete (``networking.connection_timeout``).
    header_timeout: float = 30.0
    #: Seconds an idle keep-alive connection stays open (``networking.keepalive_timeout``).
    keepalive_timeout: float = 60.0
    #: Open connections beyond which new ones are closed (``networking.max_connections``).
    max_connections: int = 10_000
    rate_limit_enabled: bool = False
    rate_limit_per_second: float = 100.0
    rate_limit_burst: int = 200
    cors_enabled: bool = False
    cors_origins: tuple[str, ...] = ()
    cors_methods: tuple[str, ...] = ("GET", "POST", "PUT", "DELETE")
    api_key_header: str = "X-API-Key"

    @classmethod
    def from_config(cls, config: Config) -> ApiSettings:
        networking = config["networking"]
        security = config["security"]
        return cls(
            max_body_size=int(networking["max_body_size"]),
            body_timeout=float(networking["request_timeout"]),
            header_timeout=float(networking["connection_timeout"]),
            keepalive_timeout=float(networking["keepalive_timeout"]),
            max_connections=int(networking["max_connections"]),
            rate_limit_enabled=bool(security["rate_limit_enabled"]),
            rate_limit_per_second=float(security["rate_limit_per_second"]),
            rate_limit_burst=int(security["rate_limit_burst"]),
            cors_enabled=bool(security["cors_enabled"]),
            cors_origins=tuple(security["cors_origins"]),
            cors_methods=tuple(m.upper() for m in security["cors_methods"]),
            api_key_header=str(security["api_key_header"]),
        )
