"""`cunxiang bench fanout`: how long one emergency broadcast takes to reach N terminals.

One run, start to finish:

1. a fresh SQLite file, and a broker: the embedded amqtt (inside the controller's process) or a
   Mosquitto (one given with --mosquitto-url, else our own on a free port, killed afterwards);
2. the real app under a real uvicorn server on a free port, in this process (as `cunxiang demo`);
3. N terminals registered in the villages of the bundled 咸宁市 (4212), run as simulated terminals
   in one helper process (two above 2000 terminals; `python -m bench.terminals`), so that the
   controller and the terminals do not share a core;
4. once all N are online (and a few quiet seconds have passed), t0 = the wall clock just before
   an HTTP POST of a level-1 emergency broadcast to all of 4212;
5. polling GET /api/v1/broadcasts/{id} every 0.2 s until all N deliveries are `completed`, then
   reading the delivery rows: received_at (playing_at or finished_at when an ack skipped a stage)
   and finished_at, each minus t0.

The times are the controller's own: when it handled each acknowledgement. So "received 100%" is
the POST, the broker's fan-out to N subscribers, every terminal's `received` ack, and the broker and
controller getting through N acks. "completed 100%" adds the simulated playback (--playback s plus
a start delay of 0.05-0.3 s) and the `playing` and `completed` acks.
"""

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from sqlmodel import Session, select

from api.app import create_app
from controller.embedded_broker import free_port
from controller.models import Delivery
from controller.regions import villages_under
from controller.service import Controller
from controller.settings import Settings, SettingsError, load_settings
from controller.terminals import TerminalSpec
from deploy.mosquitto import MosquittoError, mosquitto_binary, run_mosquitto, stop_process
from deploy.serve import http_server
from simulator.fleet import SimulatedSpec, fleet_for_villages

COUNTY = "4212"
HOST = "127.0.0.1"
TERMINALS_PER_PROCESS = 2000
MAX_PROCESSES = 2
POLL_INTERVAL_S = 0.2
SETTLE_S = 5.0


class BenchError(Exception):
    """The benchmark could not run (as opposed to: it ran and not every terminal completed)."""


class MosquittoMissing(BenchError):
    pass


@dataclass
class FanoutResult:
    terminals: int
    broker: str
    playback_s: float
    received_99_s: float | None = None
    received_100_s: float | None = None
    completed_100_s: float | None = None
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
    command_s: dict[int, float | None] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)

    @property
    def all_completed(self) -> bool:
        return self.completed == self.terminals

    def as_json(self) -> dict[str, Any]:
        return {
            "terminals": self.terminals,
            "broker": self.broker,
            "received_99_s": self.received_99_s,
            "received_100_s": self.received_100_s,
            "completed_100_s": self.completed_100_s,
            "playback_s": self.playback_s,
            "machine": self.machine,
        }


# --- machine and processes ------------------------------------------------------------------


def mosquitto_version(binary: str | None) -> str | None:
    if binary is None:
        return None
    try:
        out = subprocess.run([binary, "-h"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in (out.stdout + out.stderr).splitlines():
        if "version" in line:
            return line.split("version", 1)[1].strip()
    return None


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def machine_info(broker: str, mosquitto_url: str | None) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "amqtt": _package_version("amqtt"),
        "aiomqtt": _package_version("aiomqtt"),
    }
    if broker == "mosquitto":
        if mosquitto_url is not None:
            info["mosquitto"] = f"external at {mosquitto_url}"
        else:
            info["mosquitto"] = mosquitto_version(mosquitto_binary()) or "unknown"
    return info


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc), None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def machine_busy_seconds() -> float | None:
    """CPU time spent by the whole machine so far, all cores (Linux /proc/stat), None if unknown."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    ticks = [int(v) for v in first[1:9]]
    idle = ticks[3] + ticks[4]
    return (sum(ticks) - idle) / _TICKS


def cpu_snapshot(pids: dict[str, list[int]]) -> dict[str, float | None]:
    snapshot: dict[str, float | None] = {}
    for name, group in pids.items():
        values = [cpu_seconds(pid) for pid in group]
        snapshot[name] = None if any(v is None for v in values) else sum(v for v in values if v is not None)
    snapshot["machine"] = machine_busy_seconds()
    return snapshot


class Mosquitto:
    """Our own Mosquitto on a free port, configured for a benchmark, stopped afterwards."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port(HOST)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self.port}"

    async def start(self) -> None:
        config = (
            f"listener {self.port} {HOST}\n"
            "allow_anonymous true\n"
            "max_queued_messages 100000\n"
            "max_inflight_messages 0\n"
            "persistence false\n"
            "connection_messages false\n"
            "log_dest stderr\n"
            "log_type error\n"
            "log_type warning\n"
        )
        try:
            self.process = await asyncio.to_thread(run_mosquitto, config, self.workdir, self.port)
        except MosquittoError as exc:
            raise BenchError(str(exc)) from exc

    async def stop(self) -> None:
        if self.process is not None:
            await asyncio.to_thread(stop_process, self.process)


async def _end(process: asyncio.subprocess.Process, grace: float) -> None:
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        await asyncio.wait_for(process.wait(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


# --- the run ----------------------------------------------------------------------------------


def choose_fleet(villages: list[str], n: int) -> list[SimulatedSpec]:
    per_village = max(1, math.ceil(n / len(villages)))
    return fleet_for_villages(villages, per_village)[:n]


def split(specs: list[SimulatedSpec]) -> list[list[SimulatedSpec]]:
    parts = min(MAX_PROCESSES, max(1, math.ceil(len(specs) / TERMINALS_PER_PROCESS)))
    return [specs[i::parts] for i in range(parts)]


async def start_terminals(
    workdir: Path, broker_url: str, prefix: str, specs: list[SimulatedSpec], playback: float, timeout: float
) -> list[asyncio.subprocess.Process]:
    processes = []
    for index, part in enumerate(split(specs)):
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
            )
        )
    return processes


async def wait_online(
    controller: Controller,
    specs: list[SimulatedSpec],
    processes: list[asyncio.subprocess.Process],
    serving: "asyncio.Task[None]",
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    ids = [s.terminal_id for s in specs]
    while True:
        online = sum(1 for terminal_id in ids if controller.presence_of(terminal_id) == "online")
        if online == len(ids):
            return
        dead = [p for p in processes if p.returncode is not None]
        if dead:
            raise BenchError(
                f"a terminal process exited (status {dead[0].returncode}) with {online} of {len(ids)} online"
            )
        if serving.done():
            raise BenchError("the server stopped while terminals were connecting")
        if time.monotonic() > deadline:
            raise BenchError(f"only {online} of {len(ids)} terminals online after {timeout:.0f} s")
        await asyncio.sleep(0.5)


async def start_server(settings: Settings) -> tuple[FastAPI, uvicorn.Server, "asyncio.Task[None]", int]:
    """The app under uvicorn as `cunxiang serve` runs it (same uvicorn options), on a free port."""
    port = free_port(HOST)
    app = create_app(settings)
    server = http_server(app, HOST, port)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            with contextlib.suppress(BaseException):
                serving.result()
            raise BenchError("the controller did not start (see the log above)")
        await asyncio.sleep(0.05)
    return app, server, serving, port


def read_deliveries(controller: Controller, broadcast_id: str) -> list[Delivery]:
    with Session(controller.engine) as session:
        return list(session.exec(select(Delivery).where(Delivery.broadcast_id == broadcast_id)).all())


def read_command_times(workdir: Path, processes: int) -> dict[str, float]:
    """When each terminal took the command off its connection (epoch s), as bench.terminals noted."""
    times: dict[str, float] = {}
    for index in range(processes):
        with contextlib.suppress(OSError, ValueError):
            times.update(json.loads((workdir / f"commands-{index}.json").read_text(encoding="utf-8")))
    return times


def _quantile(values: list[float], q: float, n: int) -> float | None:
    """The time by which a fraction q of n had happened, from sorted `values`; None if too few."""
    k = max(1, math.ceil(q * n))
    return round(values[k - 1], 3) if len(values) >= k else None


def summarise(result: FanoutResult, rows: list[Delivery], t0: datetime, commands: dict[str, float]) -> None:
    n = result.terminals

    def since(at: datetime) -> float:
        return (at - t0).total_seconds()

    received: list[float] = []
    finished: list[float] = []
    sent: list[float] = []
    states: dict[str, int] = {}
    for row in rows:
        states[row.state] = states.get(row.state, 0) + 1
        if row.sent_at is not None:
            sent.append(since(row.sent_at))
        at = row.received_at or row.playing_at or (row.finished_at if row.state == "completed" else None)
        if at is not None:
            received.append(since(at))
        if row.state == "completed" and row.finished_at is not None:
            finished.append(since(row.finished_at))
    received.sort()
    result.states = states
    result.received = len(received)
    result.completed = len(finished)
    if received:
        result.first_received_s = round(received[0], 3)
    result.received_50_s = _quantile(received, 0.5, n)
    result.received_90_s = _quantile(received, 0.9, n)
    result.received_99_s = _quantile(received, 0.99, n)
    epoch0 = t0.timestamp()
    got = sorted(at - epoch0 for at in commands.values())
    result.command_s = {q: _quantile(got, q / 100, n) for q in (1, 50, 90, 99, 100)}
    if len(received) >= n:
        result.received_100_s = round(received[n - 1], 3)
    if len(finished) >= n:
        result.completed_100_s = round(max(finished), 3)
    if sent:
        result.published_s = round(max(sent), 3)


async def run_fanout(
    n: int, broker: str, mosquitto_url: str | None, playback: float, workdir: Path
) -> FanoutResult:
    result = FanoutResult(terminals=n, broker=broker, playback_s=playback)
    result.machine = machine_info(broker, mosquitto_url)
    tag = secrets.token_hex(3)
    mosquitto: Mosquitto | None = None
    processes: list[asyncio.subprocess.Process] = []
    server: uvicorn.Server | None = None
    serving: asyncio.Task[None] | None = None
    try:
        overrides: dict[str, object] = {
            "database_url": f"sqlite:///{workdir / 'bench.db'}",
            "controller_id": f"bench-{tag}",
            "topic_prefix": f"bench-{tag}",
            "http_host": HOST,
            "embedded_broker_host": HOST,
        }
        if broker == "embedded":
            overrides.update(mqtt_url=None, embedded_broker_port=free_port(HOST))
        else:
            if mosquitto_url is None:
                if mosquitto_binary() is None:
                    raise MosquittoMissing(
                        "mosquitto is not installed (looked on PATH and in /usr/sbin): install it "
                        "(apt-get install mosquitto) or give --mosquitto-url mqtt://host:port"
                    )
                mosquitto = Mosquitto(workdir)
                await mosquitto.start()
                mosquitto_url = mosquitto.url
            overrides["mqtt_url"] = mosquitto_url
        try:
            settings = load_settings(**overrides)
        except SettingsError as exc:
            raise BenchError(str(exc)) from None

        app, server, serving, http_port = await start_server(settings)
        controller: Controller = app.state.controller
        if not controller.connected:
            where = settings.mqtt_url or "embedded"
            raise BenchError(f"the controller is not connected to its broker ({where})")
        assert controller.bus is not None
        broker_url = f"mqtt://{controller.bus.address.host}:{controller.bus.address.port}"

        villages = [v.code for v in await controller.writer.call(lambda s: villages_under(s, COUNTY))]
        if not villages:
            raise BenchError(f"no villages under {COUNTY} in the database")
        specs = choose_fleet(villages, n)
        if len(specs) < n:
            raise BenchError(f"could only make {len(specs)} terminals")
        await controller.register([TerminalSpec(id=s.terminal_id, region=s.region) for s in specs])

        connect_timeout = 60.0 + 0.06 * n
        started = time.monotonic()
        processes = await start_terminals(
            workdir, broker_url, settings.topic_prefix, specs, playback, connect_timeout
        )
        print(
            f"bench: {n} terminals in {len(processes)} process(es) connecting to {broker_url} ({broker})…",
            flush=True,
        )
        await wait_online(controller, specs, processes, serving, connect_timeout + 10)
        result.online_s = round(time.monotonic() - started, 1)
        print(f"bench: all {n} terminals online after {result.online_s} s; settling…", flush=True)
        await asyncio.sleep(SETTLE_S)
        await controller.writer.flush()
        if serving.done():
            raise BenchError("the server stopped before the broadcast (interrupted?)")

        base = f"http://{HOST}:{http_port}"
        body = {"kind": "emergency", "level": 1, "regions": [COUNTY], "text": "bench", "expires_in": 600}
        pids = {"controller": [os.getpid()], "terminals": [p.pid for p in processes]}
        if mosquitto is not None and mosquitto.process is not None:
            pids["mosquitto"] = [mosquitto.process.pid]
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            (await client.get("/healthz")).raise_for_status()  # connection made before t0
            result.machine["load_1min"] = round(os.getloadavg()[0], 2)
            cpu_before = cpu_snapshot(pids)
            t0 = datetime.now(UTC)
            posted = time.monotonic()
            response = await client.post("/api/v1/broadcasts", json=body)
            result.post_s = round(time.monotonic() - posted, 3)
            if response.status_code != 201:
                raise BenchError(f"POST /api/v1/broadcasts answered {response.status_code}: {response.text}")
            broadcast_id = response.json()["id"]
            if response.json()["terminals"] != n:
                raise BenchError(f"the broadcast targets {response.json()['terminals']} terminals, not {n}")
            deadline = posted + 60.0 + playback + 0.05 * n
            completed = 0
            while True:
                asked = time.monotonic()
                report = await client.get(f"/api/v1/broadcasts/{broadcast_id}")
                result.polls.append(time.monotonic() - asked)
                report.raise_for_status()
                completed = report.json()["counts"]["completed"]
                if completed == n or time.monotonic() > deadline:
                    break
                if serving.done():
                    raise BenchError("the server stopped during the broadcast (interrupted?)")
                await asyncio.sleep(POLL_INTERVAL_S)
            cpu_after = cpu_snapshot(pids)
        for name, before in cpu_before.items():
            after = cpu_after.get(name)
            if before is not None and after is not None:
                result.cpu_s[name] = round(after - before, 2)
        if "machine" in result.cpu_s:
            ours = sum(v for k, v in result.cpu_s.items() if k != "machine")
            result.cpu_s["other processes"] = round(max(0.0, result.cpu_s.pop("machine") - ours), 2)
        rows = await asyncio.to_thread(read_deliveries, controller, broadcast_id)
        await asyncio.gather(*(_end(p, 30.0) for p in processes))
        summarise(result, rows, t0, read_command_times(workdir, len(processes)))
        if completed != n:
            print(
                f"bench: timed out after {time.monotonic() - posted:.0f} s with {completed} of {n} completed",
                file=sys.stderr,
                flush=True,
            )
        return result
    finally:
        await asyncio.gather(*(_end(p, 30.0) for p in processes))
        if server is not None and serving is not None:
            server.should_exit = True
            with contextlib.suppress(BaseException):
                await serving
        if mosquitto is not None:
            await mosquitto.stop()


# --- the command ------------------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} s"


def print_table(result: FanoutResult) -> None:
    headers = ("terminals", "broker", "received 99%", "received 100%", "completed 100%", "playback")
    row = (
        str(result.terminals),
        result.broker,
        _seconds(result.received_99_s),
        _seconds(result.received_100_s),
        _seconds(result.completed_100_s),
        f"{result.playback_s:g} s",
    )
    widths = [max(len(h), len(c)) for h, c in zip(headers, row, strict=True)]
    print()
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    print()
    details = [
        f"POST answered in {_seconds(result.post_s)}",
        f"region command published (PUBACK) by {_seconds(result.published_s)}",
        f"`received` first/50%/90% at {_seconds(result.first_received_s)} / "
        f"{_seconds(result.received_50_s)} / {_seconds(result.received_90_s)}",
        f"received {result.received}/{result.terminals}, completed {result.completed}/{result.terminals}",
    ]
    print("  " + "; ".join(details))
    if result.command_s:
        spread = " / ".join(_seconds(v) for v in result.command_s.values())
        print(f"  terminals took the command off their connection, 1%/50%/90%/99%/100%: {spread}")
    if result.polls:
        print(
            f"  {len(result.polls)} progress GETs took {sum(result.polls):.2f} s in all "
            f"(first {result.polls[0]:.3f} s, longest {max(result.polls):.3f} s)"
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
    if args.mosquitto_url is not None and args.broker != "mosquitto":
        print("--mosquitto-url goes with --broker mosquitto", file=sys.stderr)
        return 2
    try:
        with tempfile.TemporaryDirectory(prefix="cunxiang-bench-") as workdir:
            result = asyncio.run(
                run_fanout(args.terminals, args.broker, args.mosquitto_url, args.playback, Path(workdir))
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
