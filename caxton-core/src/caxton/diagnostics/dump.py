"""``caxton debug dump``: one ``.tar.gz`` with what support asks for first, from every
reachable node, and never a secret.

Each node writes its own part (:func:`node_files`): its configuration with secrets
masked, versions, agents, queues, dead letters, membership, registry and events, its
metrics, its recent log lines and its agents', and its errors of the last hour. Before
a part leaves the node, every value of a secret key of its configuration (gossip keys,
the JWT secret, key paths, a plugin's secret fields) that still appears anywhere in it
is replaced by the mask: secrets are masked at the source and scrubbed again at the end.
The node asked puts the parts in one archive (:func:`archive`), a folder per node.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from caxton import __version__
from caxton.config import SECRET_MASK
from caxton.diagnostics import local

if TYPE_CHECKING:
    from caxton.config import Config
    from caxton.node import Node

__all__ = ["archive", "node_files", "secret_values"]

#: Errors and log lines of the last this many seconds go in the dump.
RECENT_SECONDS = 3600.0
#: Shorter secret values are not scrubbed from the text (they would match anywhere);
#: masking at the source covers them.
MIN_SCRUBBED = 6


def secret_values(config: Config) -> list[str]:
    """Every value of a key marked secret in ``config``, longest first."""
    found: set[str] = set()
    for path, values in config.values.items():
        section = config.sections[path]
        for key, value in values.items():
            field = section.field(key)
            if field is None or not field.secret or not value:
                continue
            for item in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(item, str) and len(item) >= MIN_SCRUBBED:
                    found.add(item)
    return sorted(found, key=len, reverse=True)


def scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, SECRET_MASK)
    return text


def _json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False, default=str)


async def node_files(node: Node, **_: Any) -> dict[str, Any]:
    """This node's part of the dump: file name -> text, scrubbed of its secrets."""
    since = time.time() - RECENT_SECONDS
    files = {
        "config.json": _json(local.configuration(node)),
        "status.json": _json(local.status(node)),
        "metrics.txt": local.metrics_text(node)["text"],
        "logs.json": _json(local.logs(node, since=since)),
        "errors.json": _json(local.errors(node, since=since)),
    }
    secrets = secret_values(node.config)
    return {
        "node_id": node.node_id,
        "files": {name: scrub(text, secrets) for name, text in files.items()},
    }


def _members(name: str, data: bytes) -> Iterator[tuple[tarfile.TarInfo, io.BytesIO]]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o600
    yield info, io.BytesIO(data)


def archive(gathered: Mapping[str, Any], asked: str, secrets: list[str]) -> bytes:
    """The ``.tar.gz``: ``caxton-debug/manifest.json`` and a folder per node."""
    manifest = {
        "created_at": time.time(),
        "caxton_version": __version__,
        "asked_node": asked,
        "nodes": [part["node_id"] for part in gathered["nodes"]],
        "unreachable": gathered["unreachable"],
        "contents": {
            "config.json": "running configuration (secrets masked), defaults, sources",
            "status.json": "versions, agents, queues, dead letters, members, registry, events",
            "metrics.txt": "the node's Prometheus metrics",
            "logs.json": "the node's recent log lines and its agents' (last hour)",
            "errors.json": "crashes, dead letters, failure answers (last hour)",
        },
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        entries = [("caxton-debug/manifest.json", _json(manifest))]
        for part in gathered["nodes"]:
            for name, text in sorted(part["files"].items()):
                entries.append((f"caxton-debug/{part['node_id']}/{name}", text))
        for path, text in entries:
            for info, data in _members(path, scrub(text, secrets).encode()):
                tar.addfile(info, data)
    return buffer.getvalue()
