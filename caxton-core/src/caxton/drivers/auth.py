"""Auth drivers: an ordered chain (entry-point group ``caxton.auth``).

Each driver is asked in configured order. A driver returns ``None`` when it does not
recognise the credentials (the next one is asked), an :class:`Identity` when they are
valid, and raises :class:`caxton.errors.AuthError` when they are its kind but invalid:
an invalid credential is never passed on to the next driver.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from caxton.drivers.base import Driver


@dataclass(frozen=True)
class Credentials:
    headers: Mapping[str, str]
    remote: str | None = None
    method: str = "GET"
    path: str = "/"


@dataclass(frozen=True)
class Identity:
    name: str
    roles: frozenset[str]
    #: Name of the driver that authenticated it.
    driver: str = ""
    attributes: Mapping[str, Any] = field(default_factory=dict)


class AuthDriver(Driver):
    kind: ClassVar[str] = "auth"

    @abstractmethod
    async def authenticate(self, credentials: Credentials) -> Identity | None:
        """Identity for valid credentials, None for unrecognised ones, AuthError if invalid."""
