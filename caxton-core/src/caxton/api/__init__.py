"""The REST API (aiohttp). See docs/api.md."""

from __future__ import annotations

from caxton.api.server import build_app, start_api

__all__ = ["build_app", "start_api"]
