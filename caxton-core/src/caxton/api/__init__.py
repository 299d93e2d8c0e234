"""The REST API (aiohttp). See docs/api.md."""

from __future__ import annotations

from caxton.api.permissions import PERMISSIONS, PUBLIC, public, required_permission, requires
from caxton.api.server import build_app, start_api

__all__ = [
    "PERMISSIONS",
    "PUBLIC",
    "build_app",
    "public",
    "required_permission",
    "requires",
    "start_api",
]
