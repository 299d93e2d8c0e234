"""An agent's key/value state seen and changed from outside, by an operator.

The REST routes ``/api/v1/agents/{agent_id}/state[/{key}]`` (:mod:`caxton.api.agent_state`)
reach these functions on the node that runs the agent, through any node
(:mod:`caxton.cluster.agent_ops`). They read the agent's live namespace (the dict its
``kv_get`` reads) and change it the way the agent itself does (``kv_store`` and
``kv_delete`` of :class:`~caxton.agents.runtime.AgentRuntime`): the same size limit and
quota, the same write to the node's store, the same replication to the agent's replica
set; a write is answered once it is durable, as a reply after a change would be
(:meth:`~caxton.agents.commit.OutputCommit.durable`).

Keys and values are bytes. In JSON, ``key`` and ``value`` are the text when the bytes
are UTF-8 (null otherwise) and ``key_base64``/``value_base64`` are always there.
"""

from __future__ import annotations

import asyncio
import base64
from typing import TYPE_CHECKING, Any

from caxton.errors import Conflict, NotFound, PayloadTooLarge, RequestTimeout
from caxton.sandbox.abi import MAX_KEY_BYTES, Status

if TYPE_CHECKING:
    from caxton.agents.runtime import AgentRuntime

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "delete_key", "list_keys", "read_key", "write_key"]

#: Keys listed when the request gives no limit, and the most it may ask for.
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
#: Seconds a write waits to be durable (a majority of the replica set) before 504.
DURABLE_TIMEOUT = 10.0


def _text(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _entry(key: bytes, value: bytes, with_value: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"key": _text(key), "key_base64": _b64(key), "size": len(value)}
    if with_value:
        entry["value"] = _text(value)
        entry["value_base64"] = _b64(value)
    return entry


def list_keys(
    runtime: AgentRuntime, prefix: bytes = b"", after: bytes | None = None, limit: int = 100
) -> dict[str, Any]:
    """The agent's keys in byte order with their value sizes (no values): those starting
    with ``prefix``, after ``after``, at most ``limit``; ``next`` continues the listing."""
    keys = sorted(k for k in runtime.kv if k.startswith(prefix) and (after is None or k > after))
    page = keys[:limit]
    kv = runtime.kv
    return {
        "agent": runtime.name,
        "keys_total": len(kv),
        "bytes": runtime.kv_bytes,
        "entries": [_entry(k, kv[k], False) for k in page],
        "next": _b64(page[-1]) if len(keys) > limit else None,
    }


def read_key(runtime: AgentRuntime, key: bytes) -> dict[str, Any]:
    value = runtime.kv.get(key)
    if value is None:
        raise _missing(runtime, key)
    return _entry(key, value, True)


async def write_key(runtime: AgentRuntime, key: bytes, value: bytes) -> dict[str, Any]:
    """Set ``key`` as the agent's ``kv_store`` would, and answer once it is durable."""
    _check_owner(runtime)
    status = runtime.kv_store(key, value)
    if status == Status.TOO_LARGE:
        limit = runtime.manager.kv_max_value_bytes
        raise PayloadTooLarge(
            f"agent {runtime.name}: a key may hold {MAX_KEY_BYTES} bytes and a value "
            f"{limit}; this key has {len(key)} and the value {len(value)}"
        )
    if status == Status.DENIED:
        raise PayloadTooLarge(
            f"agent {runtime.name}: the value would take its state over its quota of "
            f"{runtime.manager.kv_quota_bytes} bytes (it holds {runtime.kv_bytes}); "
            f"delete keys first"
        )
    await _durable(runtime)
    return _entry(key, value, True)


async def delete_key(runtime: AgentRuntime, key: bytes) -> None:
    _check_owner(runtime)
    if runtime.kv_delete(key) == Status.NOT_FOUND:
        raise _missing(runtime, key)
    await _durable(runtime)


def _check_owner(runtime: AgentRuntime) -> None:
    if runtime.fenced is not None:
        raise Conflict(
            f"agent {runtime.name}: this copy lost its ownership ({runtime.fenced}) and "
            f"accepts no change; retry: the request goes to the agent's current node"
        )


async def _durable(runtime: AgentRuntime) -> None:
    try:
        await asyncio.wait_for(runtime.manager.outputs.durable(runtime), DURABLE_TIMEOUT)
    except asyncio.TimeoutError:
        raise RequestTimeout(
            f"agent {runtime.name}: the change is applied on its node but not yet durable "
            f"after {DURABLE_TIMEOUT:g} s (its replica holders do not answer); read it "
            f"back to see whether it held"
        ) from None


def _missing(runtime: AgentRuntime, key: bytes) -> NotFound:
    shown = _text(key)
    name = repr(shown) if shown is not None else f"(base64) {_b64(key)}"
    return NotFound(f"agent {runtime.name} has no key {name}")
