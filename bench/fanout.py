"""`cunxiang bench fanout`: how long one emergency broadcast takes to reach N terminals.

One run, start to finish:

1. a fresh SQLite file, and a broker: the embedded amqtt (inside the controller's process) or a
   Mosquitto (one given with --mosquitto-url, else our own on a free port, killed afterwards);
2. the real app under a real uvicorn server on a free port, in a child process of its own
   (`python -m bench.controller`), so that its CPU time and peak memory can be read from /proc;
3. N terminals registered over the API in the villages of the bundled 咸宁市 (4212), run as
   simulated terminals in one helper process (two above 2000 terminals; `python -m bench.terminals`);
4. once all N are online (and a few quiet seconds have passed), t0 = the wall clock just before
   an HTTP POST of a level-1 emergency broadcast to all of 4212;
5. polling the controller's progress every 0.2 s until all N deliveries are `completed` and
   written, then reading the delivery rows: received_at (playing_at or finished_at when an ack
   skipped a stage) and finished_at, each minus t0.

The times are the controller's own: when it handled each acknowledgement. So "received 100%" is
the POST, the broker's fan-out to N subscribers, every terminal's `received` ack, and the broker and
controller getting through N acks. "completed 100%" adds the simulated playback (--playback s plus
a start delay of 0.05-0.3 s) and the `playing` and `completed` acks.
"""

import argparse
import asyncio
import json
import math
import os
import secrets
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlmodel import Session, select

from bench.harness import (
    HOST,
    BenchError,
    ControllerProcess,
    Mosquitto,
    MosquittoMissing,
    bench_alert,
    cpu_snapshot,
    cpu_used,
    end_process,
    ingest_rate,
    machine_info,
    peak_rss_mb,
    persisted_at,
    quantile,
)
from controller.db import make_engine
from controller.embedded_broker import free_port
from controller.models import Delivery
from controller.regions import villages_under
from simulator.fleet import SimulatedSpec, fleet_for_villages

COUNTY = "4212"
POLL_INTERVAL_S = 0.2
SETTLE_S = 5.0
REGISTER_CHUNK = 5000


@dataclass
class FanoutResult:
    terminals: int
    broker: str
    playback_s: float
    terminal_impl: str = "lean"
    poll: str = "bench"
    received_99_s: float | None = None
    received_999_s: float | None = None
    received_100_s: float | None = None
    received_999_persisted_s: float | None = None
    """the time by which 99.9% of the N `received` were committed to the database (writer's log)"""
    completed_100_s: float | None = None
    acks_per_s: float | None = None
    resends: int | None = None
    duplicates_ignored: int | None = None
    acks_committed: int = 0
    commit_batches: int = 0
    peak_rss_mb: float | None = None
    received: int = 0
    completed: int = 0
    states: dict[str, int] = field(default_factory=dict)
    post_s: float | None = None
    published_s: float | None = None
    first_received_s: float | None = None
    received_50_s: float | None = None
    received_90_s: float | None = None
    online_s: float | None = None
    polls: list[float] = field(default_factory=list)
    final_report_s: float | None = None
    command_s: dict[int, float | None] = field(default_factory=dict)
    handling_lag_s: dict[float, float | None] = field(default_factory=dict)
    """per terminal, from taking the command off its connection to the controller handling its
    `received`: quantiles 50, 99, 99.9 (the controller's and the broker's part of the figure)"""
    cpu_s: dict[str, float] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    commit_log: list[dict[str, Any]] = field(default_factory=list)
    """the writer's batches committed after t0: when taken and committed (s after t0), rows written"""

    @property
    def all_completed(self) -> bool:
        return self.completed == self.terminals

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["polls"] = {"count": len(self.polls), "total_s": round(sum(self.polls), 3)}
        data["command_s"] = {f"{q}%": v for q, v in self.command_s.items()}
        data["handling_lag_s"] = {f"{q}%": v for q, v in self.handling_lag_s.items()}
        return data


# --- the run ----------------------------------------------------------------------------------


def choose_fleet(villages: list[str], n: int) -> list[SimulatedSpec]:
    per_village = max(1, math.ceil(n / len(villages)))
    return fleet_for_villages(villages, per_village)[:n]


def split(specs: list[SimulatedSpec], processes: int) -> list[list[SimulatedSpec]]:
    parts = max(1, min(processes, len(specs)))
    return [specs[i::parts] for i in range(parts)]


async def start_terminals(
    workdir: Path,
    broker_url: str,
    prefix: str,
    specs: list[SimulatedSpec],
    playback: float,
    timeout: float,
    impl: str,
    keyset: Path,
    process_count: int = 1,
) -> list[asyncio.subprocess.Process]:
    processes = []
    for index, part in enumerate(split(specs, process_count)):
        ids_file = workdir / f"terminals-{index}.json"
        ids_file.write_text(json.dumps([{"id": s.terminal_id, "region": s.region} for s in part]))
        processes.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.terminals",
                "--broker",
                broker_url,
                "--prefix",
                prefix,
                "--ids-file",
                str(ids_file),
                "--playback",
                str(playback),
                "--connect-timeout",
                str(timeout),
                "--times-file",
                str(workdir / f"commands-{index}.json"),
                "--impl",
                impl,
                "--keys",
                str(keyset),
            )
        )
    return processes


async def wait_online(
    controller: ControllerProcess, n: int, processes: list[asyncio.subprocess.Process], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        online = (await controller.state())["presence"].get("online", 0)
        if online >= n:
            return
        dead = [p for p in processes if p.returncode is not None]
        if dead:
            raise BenchError(
                f"a terminal process exited (status {dead[0].returncode}) with {online} of {n} online"
            )
        if time.monotonic() > deadline:
            raise BenchError(f"only {online} of {n} terminals online after {timeout:.0f} s")
        await asyncio.sleep(0.5)


async def wait_written(controller: ControllerProcess, timeout: float = 30.0) -> None:
    """Until the controller's writer has nothing waiting."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not (await controller.state())["backlog"]:
            return
        await asyncio.sleep(0.1)


def read_villages(database: Path) -> list[str]:
    engine = make_engine(f"sqlite:///{database}")
    try:
        with Session(engine) as session:
            return [v.code for v in villages_under(session, COUNTY)]
    finally:
        engine.dispose()


def read_deliveries(database: Path, broadcast_id: str) -> list[Delivery]:
    engine = make_engine(f"sqlite:///{database}")
    try:
        with Session(engine) as session:
            return list(session.exec(select(Delivery).where(Delivery.broadcast_id == broadcast_id)).all())
    finally:
        engine.dispose()


async def register(client: httpx.AsyncClient, specs: list[SimulatedSpec]) -> None:
    for i in range(0, len(specs), REGISTER_CHUNK):
        body = [{"id": s.terminal_id, "region": s.region} for s in specs[i : i + REGISTER_CHUNK]]
        response = await client.post("/api/v1/terminals", json=body)
        if response.status_code != 200:
            raise BenchError(f"POST /api/v1/terminals answered {response.status_code}: {response.text}")


def metric_total(exposition: str, name: str) -> int | None:
    """The value of an unlabelled counter in Prometheus text exposition, None if absent."""
    for line in exposition.splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[1]))
    return None


def read_command_times(workdir: Path, processes: int) -> dict[str, float]:
    """When each terminal took the command off its connection (epoch s), as bench.terminals noted."""
    times: dict[str, float] = {}
    for index in range(processes):
        try:
            times.update(json.loads((workdir / f"commands-{index}.json").read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return times


def summarise(
    result: FanoutResult,
    rows: list[Delivery],
    t0: datetime,
    commands: dict[str, float],
    commits: list[dict[str, Any]] | None = None,
) -> None:
    n = result.terminals

    def since(at: datetime) -> float:
        return (at - t0).total_seconds()

    received: list[float] = []
    finished: list[float] = []
    sent: list[float] = []
    lags: list[float] = []
    states: dict[str, int] = {}
    epoch0 = t0.timestamp()
    for row in rows:
        states[row.state] = states.get(row.state, 0) + 1
        if row.sent_at is not None:
            sent.append(since(row.sent_at))
        at = row.received_at or row.playing_at or (row.finished_at if row.state == "completed" else None)
        if at is not None:
            received.append(since(at))
            taken = commands.get(row.terminal_id)
            if taken is not None:
                lags.append(since(at) - (taken - epoch0))
        if row.state == "completed" and row.finished_at is not None:
            finished.append(since(row.finished_at))
    received.sort()
    result.states = states
    result.received = len(received)
    result.completed = len(finished)
    if received:
        result.first_received_s = round(received[0], 3)
    result.received_50_s = quantile(received, 0.5, n)
    result.received_90_s = quantile(received, 0.9, n)
    result.received_99_s = quantile(received, 0.99, n)
    result.received_999_s = quantile(received, 0.999, n)
    if commits:
        epoch = t0.timestamp()
        persisted = persisted_at([epoch + r for r in received], commits)
        result.received_999_persisted_s = quantile(
            sorted(p - epoch for p in persisted if p is not None), 0.999, n
        )
    got = sorted(at - epoch0 for at in commands.values())
    result.command_s = {q: quantile(got, q / 100, n) for q in (1, 50, 90, 99, 100)}
    lags.sort()
    result.handling_lag_s = {q: quantile(lags, q / 100, len(lags)) for q in (50, 99, 99.9)} if lags else {}
    if len(received) >= n:
        result.received_100_s = round(received[n - 1], 3)
    if len(finished) >= n:
        result.completed_100_s = round(max(finished), 3)
    if sent:
        result.published_s = round(max(sent), 3)


async def follow(
    controller: ControllerProcess, result: FanoutResult, broadcast_id: str, deadline: float
) -> int:
    """Poll until every delivery is completed and committed (or `deadline`); the completed count.

    `--poll bench` asks `GET /bench/progress/{id}` (counts from the tracker's memory) and, once the
    broadcast is over in memory and written, reads the public report once to confirm from the
    database; `--poll public` asks the public report `GET /api/v1/broadcasts/{id}` every time.
    """
    client = controller.client
    n = result.terminals
    path = f"/api/v1/broadcasts/{broadcast_id}"
    completed = 0
    while True:
        asked = time.monotonic()
        if result.poll == "bench":
            progress = (await client.get(f"/bench/progress/{broadcast_id}")).json()
            result.polls.append(time.monotonic() - asked)
            done = (progress["over"] or progress["counts"].get("completed", 0) == n) and not progress[
                "backlog"
            ]
        else:
            done = True
        if done:
            asked = time.monotonic()
            report = await client.get(path, params={"list_limit": 0 if result.poll == "bench" else 1000})
            elapsed = time.monotonic() - asked
            if result.poll == "bench":
                result.final_report_s = round(elapsed, 3)
            else:
                result.polls.append(elapsed)
            report.raise_for_status()
            completed = int(report.json()["counts"]["completed"])
            if completed == n:
                return completed
        if time.monotonic() > deadline:
            return completed if done else -1
        if controller.process is not None and controller.process.returncode is not None:
            raise BenchError("the controller stopped during the broadcast")
        await asyncio.sleep(POLL_INTERVAL_S)


async def run_fanout(
    n: int,
    broker: str,
    mosquitto_url: str | None,
    playback: float,
    workdir: Path,
    impl: str = "lean",
    poll: str = "bench",
    terminal_processes: int = 1,
) -> FanoutResult:
    result = FanoutResult(terminals=n, broker=broker, playback_s=playback, terminal_impl=impl, poll=poll)
    result.machine = machine_info(broker, mosquitto_url)
    tag = secrets.token_hex(3)
    mosquitto: Mosquitto | None = None
    processes: list[asyncio.subprocess.Process] = []
    controller: ControllerProcess | None = None
    database = workdir / "bench.db"
    try:
        overrides: dict[str, object] = {
            "database_url": f"sqlite:///{database}",
            "controller_id": f"bench-{tag}",
            "topic_prefix": f"bench-{tag}",
            "embedded_broker_host": HOST,
            "county_region": COUNTY,
        }
        if broker == "embedded":
            port = free_port(HOST)
            overrides.update(mqtt_url=None, embedded_broker_port=port)
            broker_url = f"mqtt://{HOST}:{port}"
        else:
            if mosquitto_url is None:
                mosquitto = Mosquitto(workdir)
                await mosquitto.start()
                mosquitto_url = mosquitto.url
            overrides["mqtt_url"] = mosquitto_url
            broker_url = mosquitto_url
        controller = ControllerProcess(overrides)
        await controller.start()

        villages = await asyncio.to_thread(read_villages, database)
        if not villages:
            raise BenchError(f"no villages under {COUNTY} in the database")
        specs = choose_fleet(villages, n)
        if len(specs) < n:
            raise BenchError(f"could only make {len(specs)} terminals")
        await register(controller.client, specs)

        connect_timeout = 60.0 + 0.06 * n
        started = time.monotonic()
        processes = await start_terminals(
            workdir,
            broker_url,
            str(overrides["topic_prefix"]),
            specs,
            playback,
            connect_timeout,
            impl,
            controller.keyset_path,
            terminal_processes,
        )
        print(
            f"bench: {n} terminals ({impl}) in {len(processes)} process(es) connecting to "
            f"{broker_url} ({broker})…",
            flush=True,
        )
        await wait_online(controller, n, processes, connect_timeout + 10)
        result.online_s = round(time.monotonic() - started, 1)
        print(f"bench: all {n} terminals online after {result.online_s} s; settling…", flush=True)
        await asyncio.sleep(SETTLE_S)
        await wait_written(controller)

        body = bench_alert(COUNTY)
        pids = {"controller": [controller.pid], "terminals": [p.pid for p in processes]}
        if mosquitto is not None and mosquitto.process is not None:
            pids["mosquitto"] = [mosquitto.process.pid]
        client = controller.client
        (await client.get("/healthz")).raise_for_status()  # connection made before t0
        result.machine["load_1min"] = round(os.getloadavg()[0], 2)
        cpu_before = cpu_snapshot(pids)
        t0 = datetime.now(UTC)
        if os.environ.get("BENCH_TRACE"):
            print(f"bench: t0 {t0.isoformat()}", flush=True)
        posted = time.monotonic()
        response = await client.post("/api/v1/broadcasts", json=body)
        result.post_s = round(time.monotonic() - posted, 3)
        if response.status_code != 201:
            raise BenchError(f"POST /api/v1/broadcasts answered {response.status_code}: {response.text}")
        broadcast_id = response.json()["id"]
        if response.json()["terminals"] != n:
            raise BenchError(f"the broadcast targets {response.json()['terminals']} terminals, not {n}")
        completed = await follow(controller, result, broadcast_id, posted + 60.0 + playback + 0.05 * n)
        result.cpu_s = cpu_used(cpu_before, cpu_snapshot(pids), pids)
        result.peak_rss_mb = peak_rss_mb(controller.pid)
        metrics = (await controller.client.get("/metrics")).text
        result.resends = metric_total(metrics, "cunxiang_delivery_retries_total")
        result.duplicates_ignored = metric_total(metrics, "cunxiang_delivery_transitions_ignored_total")
        commits = await controller.commits()
        rate = ingest_rate(commits, since=t0.timestamp())
        result.commit_log = [
            {
                "started": round(c["started"] - t0.timestamp(), 3) if c.get("started") else None,
                "at": round(c["at"] - t0.timestamp(), 3),
                "rows": c["rows"],
            }
            for c in commits
            if c["at"] >= t0.timestamp()
        ]
        result.acks_per_s, result.acks_committed, result.commit_batches = rate.per_s, rate.acks, rate.batches
        rows = await asyncio.to_thread(read_deliveries, database, broadcast_id)
        await asyncio.gather(*(end_process(p, 30.0) for p in processes))
        summarise(result, rows, t0, read_command_times(workdir, len(processes)), commits)
        if completed != n:
            print(
                f"bench: timed out after {time.monotonic() - posted:.0f} s with {max(completed, 0)} of {n} "
                "completed",
                file=sys.stderr,
                flush=True,
            )
        return result
    finally:
        await asyncio.gather(*(end_process(p, 30.0) for p in processes))
        if controller is not None:
            await controller.stop()
        if mosquitto is not None:
            await mosquitto.stop()


# --- the command ------------------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} s"


def print_table(result: FanoutResult) -> None:
    headers = (
        "terminals",
        "broker",
        "received 99%",
        "99.9%",
        "100%",
        "completed 100%",
        "acks/s",
        "peak RSS",
        "playback",
    )
    row = (
        str(result.terminals),
        result.broker,
        _seconds(result.received_99_s),
        _seconds(result.received_999_s),
        _seconds(result.received_100_s),
        _seconds(result.completed_100_s),
        "—" if result.acks_per_s is None else f"{result.acks_per_s:,.0f}",
        "—" if result.peak_rss_mb is None else f"{result.peak_rss_mb:.0f} MB",
        f"{result.playback_s:g} s",
    )
    widths = [max(len(h), len(c)) for h, c in zip(headers, row, strict=True)]
    print()
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    print()
    details = [
        f"received 99.9% committed to the database by {_seconds(result.received_999_persisted_s)}",
        f"POST answered in {_seconds(result.post_s)}",
        f"region command published (PUBACK) by {_seconds(result.published_s)}",
        f"`received` first/50%/90% at {_seconds(result.first_received_s)} / "
        f"{_seconds(result.received_50_s)} / {_seconds(result.received_90_s)}",
        f"received {result.received}/{result.terminals}, completed {result.completed}/{result.terminals}",
    ]
    print("  " + "; ".join(details))
    print(
        f"  acks/s: {result.acks_committed} delivery updates committed in {result.commit_batches} batches "
        "after t0; rate = all but the first batch's / (last commit - first commit)"
    )
    print(f"  peak RSS: VmHWM of the controller's process ({result.broker} broker)")
    print(
        f"  commands sent again to terminals whose `received` was overdue: {result.resends}; "
        f"acknowledgements ignored as repeats: {result.duplicates_ignored}"
    )
    if result.command_s:
        spread = " / ".join(_seconds(v) for v in result.command_s.values())
        print(
            f"  terminals ({result.terminal_impl}) took the command off their connection, "
            f"1%/50%/90%/99%/100%: {spread}"
        )
    if result.handling_lag_s:
        lag = " / ".join(_seconds(v) for v in result.handling_lag_s.values())
        print(
            "  from a terminal taking the command to the controller handling its `received`, per "
            f"terminal, 50%/99%/99.9%: {lag}"
        )
    if result.polls:
        print(
            f"  {len(result.polls)} progress GETs ({result.poll}) took {sum(result.polls):.2f} s in all "
            f"(first {result.polls[0]:.3f} s, longest {max(result.polls):.3f} s)"
            + ("" if result.final_report_s is None else f"; the final report {result.final_report_s:.3f} s")
        )
    if result.cpu_s:
        used = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in result.cpu_s.items())
        print(f"  CPU time used from t0 to the end of polling: {used}")
    if set(result.states) - {"completed"}:
        print(f"  delivery states: {result.states}")
    m = result.machine
    broker = f"amqtt {m.get('amqtt')}" if result.broker == "embedded" else f"mosquitto {m.get('mosquitto')}"
    print(
        f"  machine: {m.get('cores')} × {m.get('cpu')}, Python {m.get('python')}, {broker}; "
        f"load average {m.get('load_1min')} just before t0",
        flush=True,
    )


def run_fanout_cli(args: argparse.Namespace) -> int:
    """Run `cunxiang bench fanout`; 0 when every terminal completed, 1 when not, 2 when it could not run."""
    if args.terminals < 1:
        print("--terminals must be at least 1", file=sys.stderr)
        return 2
    if args.playback <= 0:
        print("--playback must be positive", file=sys.stderr)
        return 2
    if getattr(args, "terminal_processes", 1) < 1:
        print("--terminal-processes must be at least 1", file=sys.stderr)
        return 2
    if args.mosquitto_url is not None and args.broker != "mosquitto":
        print("--mosquitto-url goes with --broker mosquitto", file=sys.stderr)
        return 2
    try:
        with tempfile.TemporaryDirectory(prefix="cunxiang-bench-") as workdir:
            result = asyncio.run(
                run_fanout(
                    args.terminals,
                    args.broker,
                    args.mosquitto_url,
                    args.playback,
                    Path(workdir),
                    impl=getattr(args, "terminal_impl", "lean"),
                    poll=getattr(args, "poll", "bench"),
                    terminal_processes=getattr(args, "terminal_processes", 1),
                )
            )
    except MosquittoMissing as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"bench: an HTTP request to the controller failed: {exc!r}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print_table(result)
    if args.json is not None:
        args.json.write_text(json.dumps(result.as_json(), indent=2) + "\n", encoding="utf-8")
    if not result.all_completed:
        print(
            f"bench: only {result.completed} of {result.terminals} terminals completed "
            f"(states: {result.states})",
            file=sys.stderr,
        )
        return 1
    return 0
