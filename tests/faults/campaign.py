"""The fault campaign: five ``caxton server start`` processes in network namespaces,
clients on every node, seeded faults, and the checker's verdict.

    python tests/faults/campaign.py --faults 100 --transport quic --seed 42 --out DIR
    nox -s faults -- --faults 100 --transport quic --seed 42

Each node runs in its own namespace on one bridge (:class:`cluster_support.NetnsLab`),
with the fast LAN membership timings, at-least-once messaging, failover and two
replicas. One counter and one ledger agent are placed on every node. On every node
three clients send uniquely numbered requests through that node's REST API (counter
requests, ledger requests, at-least-once messages to the ledgers) and a sampler asks
the node's mode and local agents every 100 ms, while the nemesis injects the planned
faults one after the other (:mod:`nemesis`), each held, healed, and followed by a
settling time. At the end the clients stop, the queues drain, the nodes stop, and the
final state (the ledgers' key/value state, dead letters, outboxes, the agents' logs)
is read from each node's data directory. The history and the report are written to
``--out`` (``history.json``, ``report.json``, and under ``nodes/`` each node's log and
cluster events); ``checker.py
history.json`` checks a saved history again.

Needs root (network namespaces, nftables) and ``ip`` and ``nft``.
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import contextlib
import itertools
import json
import random
import re
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "cluster"))
sys.path.insert(0, str(HERE))

from checker import MODE_GRACE, check, placement_before, summary  # noqa: E402
from cluster_support import ApiError, NetnsLab, NodeProcess, ProcessCluster, netns_missing  # noqa: E402
from history import (  # noqa: E402
    Delivery,
    FinalState,
    History,
    Injected,
    Operation,
    Outcome,
    Sample,
)
from nemesis import Fault, Timing, plan  # noqa: E402

#: The fast LAN membership profile of docs/membership.md.
FAST_LAN = {
    "gossip_interval": "100ms",
    "probe_interval": "250ms",
    "probe_timeout": "125ms",
    "suspicion_multiplier": 3,
}
REQUEST_WAIT_MS = 2000
#: A failover prober's wait for each answer, and its pause between two requests.
PROBE_WAIT_MS = 1000
PROBE_PERIOD = 0.1
#: Seconds the nodes get to start and form the cluster: five processes importing and
#: compiling at once on a loaded machine (load average 15) took more than 60 s.
START_TIMEOUT = 180.0
SAMPLE_PERIOD = 0.1
LEDGER_LINE = re.compile(r"ledger (\S+) recorded by copy ([0-9a-f]+)")


@dataclass
class Options:
    faults: int = 10
    transport: str = "tcp"
    seed: int = 42
    nodes: int = 5
    timing: Timing = field(default_factory=Timing)
    rate: float = 5.0  # operations per second per client
    detection_timeout: float = 2.0
    drift_margin: float = 0.5
    drain_timeout: float = 40.0

    def settings(self) -> dict[str, Any]:
        return {
            "detection_timeout": self.detection_timeout,
            "drift_margin": self.drift_margin,
            "membership": FAST_LAN,
            "rate_per_client": self.rate,
            "hold_s": list(self.timing.hold),
            "settle_s": list(self.timing.settle),
            "delivery_guarantee": "at-least-once",
            "replicas": 2,
        }


def node_config(options: Options) -> dict[str, dict[str, Any]]:
    """The sections every node's config file gets besides the membership timings."""
    return {
        "security": {"allow_insecure_remote": True},
        "messaging": {"delivery_guarantee": "at-least-once", "message_ttl": "30s"},
        "coordination.cluster": {"failover": True, "replicas": 2},
        "partition": {"detection_timeout": f"{int(options.detection_timeout * 1000)}ms"},
        "observability": {"log_format": "json"},
    }


# -------------------------------------------------------------------------
# Clients and the sampler
# -------------------------------------------------------------------------


class Workload:
    """The clients and samplers of every node, recording into one history."""

    def __init__(
        self,
        history: History,
        cluster: ProcessCluster,
        options: Options,
        placed: dict[str, list[str]],
    ) -> None:
        self.history = history
        self.cluster = cluster
        self.options = options
        self.placed = placed  # operation kind -> the agents it goes to
        self.stopping = asyncio.Event()
        self.session: aiohttp.ClientSession | None = None

    def url(self, node: str, path: str) -> str:
        return self.cluster.nodes[node].api_url + path

    async def call(
        self, node: str, method: str, path: str, body: Any = None, timeout: float = 5.0
    ) -> tuple[int, Any]:
        """(HTTP status, JSON body); raises aiohttp/asyncio errors for no answer."""
        assert self.session is not None
        async with self.session.request(
            method, self.url(node, path), json=body, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as response:
            try:
                payload = await response.json(content_type=None)
            except ValueError:
                payload = None
            return response.status, payload

    async def operate(self, op: Operation, body: dict[str, Any], timeout: float) -> None:
        """Run one operation and record its outcome (see :mod:`history`)."""
        path = "/api/v1/agents" if op.kind == "deploy" else "/api/v1/messages"
        try:
            status, payload = await self.call(op.node, "POST", path, body, timeout)
        except aiohttp.ClientConnectorError as exc:  # refused: it never got in
            self._done(op, "fail", 0, error=str(exc)[:120])
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self._done(op, "info", 0, error=type(exc).__name__)
        else:
            outcome, value, error = interpret(op, status, payload)
            self._done(op, outcome, status, value, error)

    def _done(
        self, op: Operation, outcome: Outcome, status: int, value: Any = None, error: str = ""
    ) -> None:
        op.complete, op.outcome, op.status, op.value, op.error = (
            time.time(), outcome, status, value, error
        )  # fmt: skip
        self.history.operations.append(op)

    async def client(self, node: str, kind: str, agents: Sequence[str]) -> None:
        """One client: requests of one kind through ``node``, to agents chosen at random
        from a generator seeded by the campaign's seed."""
        rng = random.Random(f"{self.options.seed}:{node}:{kind}")
        period = 1.0 / self.options.rate
        seq = 0
        while not self.stopping.is_set():
            seq += 1
            agent = rng.choice(list(agents))
            op_id = f"{kind[0]}-{node}-{seq:06d}"
            body: dict[str, Any] = {
                "receiver": agent, "content": {"id": op_id}, "message_id": op_id
            }  # fmt: skip
            if kind == "send":
                body["performative"] = "inform"
                timeout = 5.0
            else:
                body.update(performative="request", wait_ms=REQUEST_WAIT_MS)
                timeout = REQUEST_WAIT_MS / 1000 + 3.0
            op = Operation(kind, node, agent, op_id, time.time())
            await self.operate(op, body, timeout)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), period * rng.uniform(0.5, 1.5))

    async def sampler(self, node: str) -> None:
        """The node's mode and running agents every :data:`SAMPLE_PERIOD` seconds."""
        while not self.stopping.is_set():
            at = time.time()
            mode, running = "", []
            mode_at = None
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, TypeError):
                status, body = await self.call(node, "GET", "/api/v1/cluster/status", timeout=0.5)
                mode_at = time.time()
                if status == 200:
                    mode = body["mode"]
                    _, listed = await self.call(node, "GET", "/api/v1/agents", timeout=0.5)
                    running = [a for a in listed if a.get("state") == "running"]
            # Stamped when the answer came: the node said it then (a paused node answers
            # only once it runs again, and must not claim a mode it had before the pause).
            agents = sorted(a["name"] for a in running)
            holders = {
                a["name"]: list(a["replication"]["holders"])
                for a in running
                if isinstance(a.get("replication"), dict)
            }
            self.history.samples.append(
                Sample(node, time.time(), mode, agents, holders, mode_at=mode_at)
            )
            await asyncio.sleep(max(0.0, SAMPLE_PERIOD - (time.time() - at)))

    def probe_failovers(
        self, fault: Fault, everyone: list[str], start: float
    ) -> list[asyncio.Task[None]]:
        """One prober per agent the fault cuts off from a clear majority (every node that
        ran it just before is outside it): its usual request through the majority's
        nodes in turn, every :data:`PROBE_PERIOD` seconds, until one is answered. The
        clients ask any one agent only every second or so once requests slow down under
        load, so without it the checker measured their sampling as much as the failover;
        the probes are ordinary operations, held to every property."""
        majority = fault.clear_majority(everyone)
        if majority is None or majority == frozenset(everyone):
            return []
        kinds = {agent: kind for kind in ("count", "record") for agent in self.placed[kind]}
        cut_off = [
            agent
            for agent, (hosts, _) in placement_before(self.history, start).items()
            if agent in kinds and not hosts & majority
        ]
        return [
            asyncio.create_task(self.probe_failover(fault, kinds[agent], agent, sorted(majority)))
            for agent in sorted(cut_off)
        ]

    async def probe_failover(self, fault: Fault, kind: str, agent: str, via: list[str]) -> None:
        seq = 0
        while not self.stopping.is_set():
            seq += 1
            op_id = f"{kind[0]}-probe{fault.index}-{agent}-{seq:04d}"
            node = via[seq % len(via)]
            body = {
                "receiver": agent, "content": {"id": op_id}, "message_id": op_id,
                "performative": "request", "wait_ms": PROBE_WAIT_MS,
            }  # fmt: skip
            op = Operation(kind, node, agent, op_id, time.time())
            await self.operate(op, body, PROBE_WAIT_MS / 1000 + 3.0)
            if op.outcome == "ok":
                return
            await asyncio.sleep(PROBE_PERIOD)

    async def deploy_probe(self, node: str, name: str, wasm: bytes) -> None:
        """Try to deploy an agent on ``node`` (which should refuse it without a quorum)."""
        import base64

        body = {"name": name, "wasm_module": base64.b64encode(wasm).decode()}
        await self.operate(Operation("deploy", node, name, name, time.time()), body, 10.0)


def interpret(op: Operation, status: int, payload: Any) -> tuple[Outcome, Any, str]:
    """An answer's outcome and value for ``op`` (see :mod:`history`)."""
    if status == 504 or (status >= 500 and status != 503):
        return "info", None, str(payload)[:120]
    if status >= 300:
        return "fail", None, str(payload)[:120]
    if op.kind in ("send", "deploy"):
        return "ok", None, ""
    reply = (payload or {}).get("reply") or {}
    content = reply.get("content")
    if reply.get("performative") != "inform" or not isinstance(content, dict):
        return "info", None, f"reply {reply.get('performative')}: {str(content)[:80]}"
    if op.kind == "count":
        return "ok", content.get("count"), ""
    if content.get("id") != op.op_id:
        return "info", None, f"reply for {content.get('id')}"
    return "ok", content.get("copy"), ""


# -------------------------------------------------------------------------
# The nemesis
# -------------------------------------------------------------------------


class Nemesis:
    """Injects the planned faults one at a time and heals each."""

    def __init__(
        self,
        lab: NetnsLab,
        cluster: ProcessCluster,
        workload: Workload,
        options: Options,
        probe_wasm: bytes,
        log: Callable[[str], None],
    ) -> None:
        self.lab = lab
        self.cluster = cluster
        self.workload = workload
        self.options = options
        self.probe_wasm = probe_wasm
        self.log = log

    def inject(self, fault: Fault) -> None:
        if fault.kind == "kill":
            self.cluster.nodes[fault.nodes[0]].kill()
        elif fault.kind == "pause":
            self.cluster.nodes[fault.nodes[0]].signal(signal.SIGSTOP)
        elif fault.kind == "loss":
            for node in fault.nodes:
                self.lab.loss(node, fault.loss_percent)
        else:
            self.lab.block(fault.links)

    def heal(self, fault: Fault) -> None:
        if fault.kind == "kill":
            node = self.cluster.nodes[fault.nodes[0]]
            others = [n.address for n in self.cluster.nodes.values() if n is not node]
            node.start(join=others)
        elif fault.kind == "pause":
            self.cluster.nodes[fault.nodes[0]].signal(signal.SIGCONT)
        else:
            self.lab.heal()

    async def run(self, faults: Sequence[Fault]) -> None:
        everyone = list(self.cluster.nodes)
        for fault in faults:
            self.log(f"fault {fault.index + 1}/{len(faults)}: {fault.kind} ({fault.detail}) "
                     f"for {fault.hold:g} s")  # fmt: skip
            await asyncio.to_thread(self.inject, fault)
            start = time.time()
            probes = [
                asyncio.create_task(self.probe_minority(fault, everyone, start)),
                *self.workload.probe_failovers(fault, everyone, start),
            ]
            await asyncio.sleep(fault.hold)
            for probe in probes:
                probe.cancel()
            # The fault is over from the moment the heal begins: what a node says while it
            # is being healed is not held against it.
            self.workload.history.faults.append(Injected(fault, start, time.time()))
            await asyncio.to_thread(self.heal, fault)
            await asyncio.sleep(fault.settle)
            await asyncio.to_thread(self.wait_converged)

    async def probe_minority(self, fault: Fault, everyone: list[str], start: float) -> None:
        """Once the detection timeout (and the sampling grace) has passed, try a deploy on
        every running node that has no quorum: each must be refused."""
        await asyncio.sleep(self.options.detection_timeout + MODE_GRACE + 0.5)
        without = [n for n in everyone if n not in fault.quorum(everyone) and n not in fault.down]
        await asyncio.gather(
            *(
                self.workload.deploy_probe(node, f"probe-{fault.index}-{node}", self.probe_wasm)
                for node in without
            )
        )

    def wait_converged(self, timeout: float = 60.0) -> None:
        nodes = list(self.cluster.nodes.values())
        try:
            self.cluster.wait_converged(nodes, timeout)
        except AssertionError:
            self.log(f"the cluster did not converge within {timeout:g} s after the heal; going on")


# -------------------------------------------------------------------------
# Setting up, running, collecting
# -------------------------------------------------------------------------


def build_agents(directory: Path) -> dict[str, bytes]:
    from caxton.testing.sandbox import build_example_agents

    return build_example_agents(directory)


def start_cluster(
    lab: NetnsLab, base: Path, options: Options, log: Callable[[str], None]
) -> ProcessCluster:
    cluster = ProcessCluster(
        base, transport=options.transport, cluster=FAST_LAN, extra=node_config(options)
    )
    for index in range(1, options.nodes + 1):
        name = f"n{index}"
        cluster.add(name, host=lab.add(name), netns=lab.namespaces[name])
    nodes = list(cluster.nodes.values())
    try:
        nodes[0].start(bootstrap=True)
        cluster.wait_until(nodes[0].ready, START_TIMEOUT, "n1 ready")
        for node in nodes[1:]:
            node.start(join=[nodes[0].address])
        cluster.wait_converged(nodes, START_TIMEOUT)
    except BaseException:
        cluster.close()  # run() never gets the cluster to close: its nodes outlived it
        raise
    log(f"{len(nodes)} nodes up over {options.transport}")
    return cluster


def deploy_agents(cluster: ProcessCluster, agents: dict[str, bytes]) -> dict[str, list[str]]:
    """One counter and one ledger on every node; wait until each answers from every node."""
    import base64

    first = next(iter(cluster.nodes.values()))
    placed: dict[str, list[str]] = {"count": [], "record": []}
    for node in cluster.nodes:
        for kind, module in (("count", "counter"), ("record", "ledger")):
            name = f"{module}-{node}"
            body = {
                "name": name,
                "wasm_module": base64.b64encode(agents[module]).decode(),
                "target_node": node,
            }

            def deployed(body: dict[str, Any] = body) -> bool:
                # A node may refuse writes for a moment after the cluster forms (until
                # its quorum is established): try again until the registry has it.
                if body["name"] in first.agents():
                    return True
                with contextlib.suppress(ApiError, OSError):
                    first.request("POST", "/api/v1/agents", body, timeout=30)
                return False

            cluster.wait_until(deployed, 60, f"{name} deployed on {node}", 0.5)
            placed[kind].append(name)
    names = placed["count"] + placed["record"]
    attempts = itertools.count(1)

    def everyone_answers() -> bool:
        for node, name, warmup_id in warmup_requests(list(cluster.nodes), names, next(attempts)):
            try:
                cluster.nodes[node].ask(name, {"id": warmup_id}, wait_ms=2000)
            except Exception:
                return False
        return True

    cluster.wait_until(everyone_answers, 60, "every agent answering through every node", 0.5)
    time.sleep(1.0)  # replicas made (every agent's module on its holders)
    placed["send"] = list(placed["record"])
    return placed


def warmup_requests(
    nodes: Sequence[str], names: Sequence[str], attempt: int
) -> list[tuple[str, str, str]]:
    """(node, agent, content id) of one warm-up pass: every agent asked through every
    node. The id names the pass: a pass that fails part-way is asked again from the
    start, and an agent answered in the first pass would otherwise log the same id
    twice, which the checker counts as one message delivered twice (16 such
    "duplicates" over quic, 16-19 s apart before the first fault)."""
    return [(node, name, f"warmup{attempt}-{node}-{name}") for node in nodes for name in names]


def drain(cluster: ProcessCluster, timeout: float) -> None:
    """Wait until no node has messages queued, being forwarded or held for a partition."""

    def idle(node: NodeProcess) -> bool:
        try:
            stats = node.request("GET", "/api/v1/queues", timeout=3.0)
        except Exception:
            return False
        totals = stats.get("totals", {})
        return not (
            stats.get("total_queued") or totals.get("forwarding") or stats.get("queued_writes")
        )

    with contextlib.suppress(AssertionError):
        cluster.wait_until(lambda: all(idle(n) for n in cluster.nodes.values()), timeout,
                           "queues drained", 0.5)  # fmt: skip


def collect(cluster: ProcessCluster, ledgers: Sequence[str]) -> FinalState:
    """Hosts from the APIs; then stop every node and read its store and log."""
    hosts: dict[str, list[str]] = {}
    agent_ids: dict[tuple[str, str], str] = {}
    for node in cluster.nodes.values():
        with contextlib.suppress(Exception):
            for agent in node.request("GET", "/api/v1/agents", timeout=5.0):
                if agent.get("state") == "running":
                    hosts.setdefault(agent["name"], []).append(node.node_id)
                    agent_ids[(agent["name"], node.node_id)] = agent["id"]
        with contextlib.suppress(Exception):  # for whoever reads an anomaly's story
            events = node.request("GET", "/api/v1/cluster/events?limit=1000", timeout=10.0)
            (cluster.base_dir / f"{node.node_id}.events.json").write_text(json.dumps(events))
    for node in cluster.nodes.values():
        if node.running:
            node.signal(signal.SIGTERM)
    for node in cluster.nodes.values():
        with contextlib.suppress(Exception):
            node.stop(timeout=30)
        node.kill()
    dead_letters: dict[str, str] = {}
    pending: list[str] = []
    ledger_ids: dict[str, list[str]] = {}
    for node in cluster.nodes.values():
        with contextlib.closing(open_store(node)) as db:
            dead_letters.update(db.execute("SELECT message_id, reason FROM dead_letters"))
            unacked = db.execute("SELECT message_id FROM outbox WHERE acked_at IS NULL")
            pending += [row[0] for row in unacked]
            with contextlib.suppress(sqlite3.OperationalError):  # only once clustered
                pending += [r[0] for r in db.execute("SELECT message_id FROM queued_writes")]
            for ledger in ledgers:
                # The copy the registry routes to: the lowest node id running it.
                if min(hosts.get(ledger, ["-"])) == node.node_id:
                    rows = db.execute(
                        "SELECT key FROM agent_kv WHERE agent_id = ?",
                        (agent_ids[(ledger, node.node_id)],),
                    )
                    ledger_ids[ledger] = [bytes(r[0]).decode() for r in rows]
    deliveries = [d for node in cluster.nodes.values() for d in read_deliveries(node)]
    return FinalState(hosts, ledger_ids, dead_letters, pending, deliveries)


def open_store(node: NodeProcess) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{node.data_dir / 'local.db'}?mode=ro", uri=True)


def read_deliveries(node: NodeProcess) -> list[Delivery]:
    """Every "ledger ID recorded by copy C" line of the node's (JSON lines) log."""
    found = []
    for line in node.log().splitlines():
        match = LEDGER_LINE.search(line)
        if match is None:
            continue
        at = 0.0
        with contextlib.suppress(ValueError, KeyError, TypeError):
            stamp = json.loads(line)["ts"]  # 2026-12-07T18:21:41.123Z
            at = calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S"))
            at += int(stamp[20:23]) / 1000
        found.append(Delivery(match.group(1), node.node_id, at, match.group(2)))
    return found


async def exercise(
    lab: NetnsLab,
    cluster: ProcessCluster,
    history: History,
    options: Options,
    placed: dict[str, list[str]],
    agents: dict[str, bytes],
    log: Callable[[str], None],
) -> None:
    workload = Workload(history, cluster, options, placed)
    nemesis = Nemesis(lab, cluster, workload, options, agents["echo"], log)
    faults = plan(options.seed, options.faults, list(cluster.nodes), options.timing)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        workload.session = session
        tasks = [asyncio.create_task(workload.sampler(node)) for node in cluster.nodes]
        tasks += [
            asyncio.create_task(workload.client(node, kind, placed[kind]))
            for node in cluster.nodes
            for kind in ("count", "record", "send")
        ]
        try:
            await asyncio.sleep(2.0)  # a fault-free start as the baseline
            await nemesis.run(faults)
            await asyncio.sleep(2.0)
        finally:
            workload.stopping.set()
            await asyncio.gather(*tasks, return_exceptions=True)


def run(options: Options, workdir: Path, log: Callable[[str], None] = print) -> History:
    """The whole campaign; the history with its final state (see the module docstring)."""
    agents = build_agents(workdir / "agents")
    history = History(options.seed, options.transport, [], options.settings())
    lab = NetnsLab()
    cluster: ProcessCluster | None = None
    try:
        cluster = start_cluster(lab, workdir / "nodes", options, log)
        history.nodes = list(cluster.nodes)
        placed = deploy_agents(cluster, agents)
        history.started = time.time()
        asyncio.run(exercise(lab, cluster, history, options, placed, agents, log))
        log("faults done; draining the queues")
        drain(cluster, options.drain_timeout)
        history.finished = time.time()
        history.final = collect(cluster, placed["record"])
    finally:
        if cluster is not None:
            cluster.close()
        lab.close()
    return history


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", type=int, default=100)
    parser.add_argument("--transport", choices=("tcp", "quic"), default="tcp")
    parser.add_argument("--seed", type=int, default=None, help="default: a random one, printed")
    parser.add_argument("--hold", type=float, nargs=2, default=(3.0, 12.0), metavar=("MIN", "MAX"))
    parser.add_argument("--rate", type=float, default=5.0, help="operations/s per client")
    parser.add_argument("--drift-margin", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=None, help="where history and logs go")
    args = parser.parse_args(argv)
    missing = netns_missing()
    if missing is not None:
        print(f"the fault campaign needs {missing}", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    options = Options(
        faults=args.faults,
        transport=args.transport,
        seed=seed,
        timing=Timing(hold=tuple(args.hold)),
        rate=args.rate,
        drift_margin=args.drift_margin,
    )
    out = args.out or Path(tempfile.mkdtemp(prefix=f"caxton-faults-{seed}-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"fault campaign: seed {seed}, {args.faults} faults over {args.transport}; output {out}")
    history = run(options, out, log=lambda text: print(time.strftime("%H:%M:%S"), text, flush=True))
    history.save(out / "history.json")
    report = check(history)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(summary(report))
    print(f"reproduce: nox -s faults -- --faults {args.faults} --transport {args.transport} "
          f"--seed {seed}")  # fmt: skip
    return 0 if all(p["holds"] for p in report["properties"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
