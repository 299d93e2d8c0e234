"""systemd's service notification protocol, without libsystemd (see ``sd_notify(3)``).

A unit with ``Type=notify`` starts a node and waits for ``READY=1``, which the node sends
once it serves (API bound, cluster joined, agents restored); ``STOPPING=1`` when it begins
to shut down; and, when the unit sets ``WatchdogSec=``, ``WATCHDOG=1`` at half that
interval from the event loop, so a node whose loop is stuck is restarted by systemd.

Outside systemd (``$NOTIFY_SOCKET`` unset) every function here does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (``"READY=1"``, ``"STOPPING=1"``, ...) to the service manager.

    Returns whether a manager was told: False when ``$NOTIFY_SOCKET`` is unset. A socket
    that cannot be reached is logged once per call and never raises: the node serves
    whether or not systemd hears it.
    """
    env = os.environ if env is None else env
    address = env.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("could not notify the service manager (%s): %s", state.split("\n")[0], exc)
        return False
    return True


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``$WATCHDOG_USEC``, or None.

    None when the unit sets no watchdog, or when ``$WATCHDOG_PID`` names another process
    (the variables were inherited, not meant for this one).
    """
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000


async def watchdog(interval: float, env: Mapping[str, str] | None = None) -> None:
    """Ping the watchdog every ``interval`` seconds until cancelled.

    The pings come from the event loop itself, so a loop that stops turning (an agent
    call that never yields, a deadlock) stops them and systemd restarts the node.
    """
    while True:
        notify("WATCHDOG=1", env)
        await asyncio.sleep(interval)
