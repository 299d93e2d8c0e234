"""Caxton: a secure WebAssembly runtime for multi-agent systems.

Plugin authors need one import::

    from caxton import hookimpl
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import pluggy

PROJECT_NAME = "caxton"

#: Marker for hook implementations: ``@hookimpl def caxton_node_started(node): ...``
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
#: Marker for hook specifications (used by :mod:`caxton.hookspecs`).
hookspec = pluggy.HookspecMarker(PROJECT_NAME)

try:
    __version__ = version("caxton-core")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"

__all__ = ["PROJECT_NAME", "__version__", "hookimpl", "hookspec"]
