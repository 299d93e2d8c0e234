"""Caxton auth driver ``jwt``: JWT bearer tokens checked with PyJWT. See docs/auth.md."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.2.0"
