"""Every object stored on the aiohttp application, declared once."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from caxton.node import Node

NODE = web.AppKey["Node"]("node")
