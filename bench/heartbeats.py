"""`cunxiang bench heartbeats`: what terminals' heartbeats cost the controller, in CPU and in writes.

Ten thousand terminals beating every 30 s send 333 heartbeats a second, day and night; each must
cost little, and only a change (a terminal coming or going, a fault appearing or clearing) may
reach the database. This benchmark measures that:

1. our own Mosquitto on a free port, a fresh SQLite file, and the real controller and app in a
   child process (`python -m bench.controller`, as in `cunxiang bench ingest`);
2. N terminals registered over the API in the villages of 4212 (not measured: registration hashes
   a new MQTT secret for each, about 1 ms a terminal), then each one's retained `online` birth
   published (heartbeat every 30 s), until the controller has all N online and has written it;
3. publisher processes (`python -m bench.heartbeat_publisher`, one paho-mqtt connection each)
   that have built and encoded the H heartbeats beforehand, with a simulated terminal's telemetry,
   spread round-robin over the N terminals, publish them QoS 0 on the terminals' heartbeat topics,
   as fast as they can (or --rate a second in all); with --fault-share F, a share F of them report
   a fault that the terminal's next heartbeat reports gone;
4. the flood ends when the controller's own count of heartbeats received
   (`cunxiang_mqtt_messages_received_total{channel="heartbeat"}` in `GET /metrics`, polled every
   0.2 s; with --rate, from 2 s before the last heartbeat is due) has grown by H: the controller
   handles each message completely when it reads it, and the metrics are served by the same event
   loop, so by then it has handled them all;
5. then, with no traffic at all, the controller's CPU over --idle seconds: the cost of keeping N
   terminals (the once-a-second presence check over all of them, the writer's and MQTT's timers).

Reported: the controller's CPU seconds (user + system, /proc) from the go to the end of the flood,
per 100,000 heartbeats; heartbeats handled a second; database rows written per heartbeat, by table
(updates from the writer's commit log, new rows counted in the SQLite file, the total from the
writer's `cunxiang_db_flush_rows` histogram); its peak RSS; its idle CPU a second; the CPU other
processes used meanwhile; and with --profile a py-spy profile of the flood, by where the time went.
"""

import argparse
import asyncio
import json
import re
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.fanout import choose_fleet, read_villages, register, wait_written
from bench.harness import (
    BenchError,
    ControllerProcess,
    Mosquitto,
    MosquittoMissing,
    Profiler,
    city_controller,
    controller_categories,
    cpu_seconds,
    cpu_snapshot,
    cpu_used,
    machine_info,
    peak_rss_mb,
    summarise_profile,
    tear_down,
    whole,
)
from bench.heartbeat_publisher import fault_indices
from bench.ingest import wait_files

RECEIVED = "cunxiang_mqtt_messages_received_total"
FLUSH_ROWS = "cunxiang_db_flush_rows_sum"
FLUSHES = "cunxiang_db_flushes_total"
INSERTED_TABLES = ("presence_event", "alarm")
"""tables the heartbeat path adds rows to (the writer's commit log counts only updates)"""
POLL_S = 0.2


@dataclass
class HeartbeatsResult:
    terminals: int
    heartbeats: int
    publishers: int
    fault_share: float
    rate: float
    faults_planned: int = 0
    received: int = 0
    flood_s: float | None = None
    publish_s: float | None = None
    heartbeats_per_s: float | None = None
    controller_cpu_s: float | None = None
    cpu_s_per_100k: float | None = None
    cpu_s_per_100k_above_idle: float | None = None
    """the same less what the controller spends idle (idle CPU a second × the flood's seconds)"""
    rows_by_table: dict[str, int] = field(default_factory=dict)
    rows_total: int = 0
    rows_total_metrics: int | None = None
    rows_per_heartbeat: float | None = None
    batches: int = 0
    idle_s: float = 0.0
    idle_cpu_s: dict[str, float] = field(default_factory=dict)
    idle_cpu_ms_per_s: float | None = None
    idle_rows: int = 0
    online_after: int = 0
    peak_rss_mb: float | None = None
    setup_s: dict[str, float] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


# --- the figures (pure) -----------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """The value of one sample in Prometheus text exposition, 0.0 if it is not there."""
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in (labels or {}).items()):
            return float(match.group(3))
    return 0.0


def rows_updated(commits: list[dict[str, Any]], since: float, until: float | None = None) -> dict[str, int]:
    """Rows UPDATEd per table in the batches committed from `since` (to `until`), from
    `GET /bench/commits` entries (`rows`: rows written per table, several updates of a row merged)."""
    rows: Counter[str] = Counter()
    for commit in commits:
        if commit["at"] >= since and (until is None or commit["at"] <= until):
            rows.update(commit["rows"])
    return dict(rows)


def batches_since(commits: list[dict[str, Any]], since: float, until: float | None = None) -> int:
    return sum(1 for c in commits if c["at"] >= since and (until is None or c["at"] <= until))


def per_100k(cpu_s: float, heartbeats: int) -> float | None:
    """CPU seconds per 100,000 heartbeats."""
    return round(cpu_s * 100_000 / heartbeats, 3) if heartbeats else None


def core_share(cpu_s_per_100k: float, terminals: int, interval_s: float = 30.0) -> float:
    """The share of one core that `terminals` beating every `interval_s` keep busy."""
    return cpu_s_per_100k / 100_000 * terminals / interval_s


CATEGORIES = controller_categories(
    ("decoding and validating (decode_heartbeat, pydantic)", ("decode_heartbeat (devices/messages.py",)),
    ("presence (PresenceTracker.on_heartbeat)", ("on_heartbeat (controller/presence.py",)),
    ("alarms (AlarmTracker.on_heartbeat, faults_in)", ("on_heartbeat (controller/alarms.py",)),
    ("presence check over all terminals", ("check (controller/presence.py",)),
)


# --- the run ----------------------------------------------------------------------------------


def count_rows(database: Path) -> dict[str, int]:
    with sqlite3.connect(database) as connection:
        return {
            table: int(connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
            for table in INSERTED_TABLES
        }


async def metrics_text(controller: ControllerProcess) -> str:
    response = await controller.client.get("/metrics")
    response.raise_for_status()
    return response.text


def received(text: str) -> int:
    return int(metric_value(text, RECEIVED, {"channel": "heartbeat"}))


async def wait_online(controller: ControllerProcess, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        state = await controller.state()
        if state["presence"].get("online", 0) >= n and not state["backlog"]:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"the controller had not all {n} terminals online: {state}")
        await asyncio.sleep(0.1)


async def publish(args: list[str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "bench.heartbeat_publisher", *args)


async def run_heartbeats(
    n: int,
    h: int,
    publishers: int,
    fault_share: float,
    rate: float,
    idle_s: float,
    profile: Path | None,
    workdir: Path,
) -> HeartbeatsResult:
    result = HeartbeatsResult(n, h, publishers, fault_share, rate)
    result.faults_planned = len(fault_indices(n, h, fault_share))
    result.machine = machine_info("mosquitto", None)
    prefix = f"bench-{secrets.token_hex(3)}"
    database = workdir / "bench.db"
    mosquitto = Mosquitto(workdir, max_queued=max(100_000, 2 * h))
    controller: ControllerProcess | None = None
    processes: list[asyncio.subprocess.Process] = []
    profiler: Profiler | None = None
    try:
        await mosquitto.start()
        controller = city_controller(database, prefix, mosquitto.url)
        await controller.start()
        specs = choose_fleet(await asyncio.to_thread(read_villages, database), n)
        if len(specs) < n:
            raise BenchError(f"could only make {len(specs)} terminals")
        began = time.monotonic()
        await register(controller.client, specs)
        result.setup_s["register"] = round(time.monotonic() - began, 1)

        ids_file = workdir / "fleet.json"
        ids_file.write_text(json.dumps([[s.terminal_id, s.region] for s in specs]), encoding="utf-8")
        common = ["--broker", mosquitto.url, "--prefix", prefix, "--ids-file", str(ids_file)]
        began = time.monotonic()
        births = await publish(
            [*common, "--report", str(workdir / "births.json"), "--client-id", f"{prefix}-births", "births"]
        )
        if await births.wait():
            raise BenchError("the births were not all published")
        await wait_online(controller, n, 120)
        await wait_written(controller)
        result.setup_s["online"] = round(time.monotonic() - began, 1)

        go = workdir / "go"
        ready = [workdir / f"ready-{i}" for i in range(publishers)]
        reports = [workdir / f"published-{i}.json" for i in range(publishers)]
        for i in range(publishers):
            processes.append(
                await publish(
                    [
                        *common, "--report", str(reports[i]), "--ready-file", str(ready[i]),
                        "--go-file", str(go), "--client-id", f"{prefix}-pub-{i}",
                        "heartbeats", "--total", str(h), "--slice", f"{i}/{publishers}",
                        "--fault-share", str(fault_share), "--rate", str(rate / publishers),
                    ]
                )
            )  # fmt: skip
        await wait_files(ready, processes, 300)
        pids: dict[str, list[int]] = {
            "controller": [controller.pid],
            "publishers": [p.pid for p in processes],
        }
        if mosquitto.process is not None:
            pids["mosquitto"] = [mosquitto.process.pid]
        if profile is not None:
            profiler = Profiler(controller.pid, profile, CATEGORIES)
            await profiler.start()
        before = await metrics_text(controller)
        rows_before = await asyncio.to_thread(count_rows, database)
        cpu_before = cpu_snapshot(pids)
        go_at = time.time()
        go.touch()

        # The end: the controller's count of heartbeats received has grown by h (or stopped
        # growing for 5 s after the publishers finished: some were lost on the way).
        start_count = received(before)
        if rate > 0:
            # Paced: no polling (each GET /metrics costs the controller a few ms) until 2 s before
            # the last heartbeat is due.
            await asyncio.sleep(max(0.0, h / rate - 2.0))
        count, last_change, end = start_count, time.monotonic(), go_at
        while count - start_count < h:
            await asyncio.sleep(POLL_S)
            now_count = received(await metrics_text(controller))
            end = time.time()
            if now_count != count:
                count, last_change = now_count, time.monotonic()
            elif all(p.returncode is not None for p in processes) and time.monotonic() - last_change > 5:
                break
        cpu_after = cpu_snapshot(pids)
        result.received = count - start_count
        if profiler is not None and profile is not None:
            await profiler.stop()  # its summary has the ingest benchmark's categories: ours instead
            raw = await asyncio.to_thread(profile.read_text, encoding="utf-8")
            result.profile = summarise_profile(raw, CATEGORIES, top=15, other="other (idle threads included)")
        result.cpu_s = cpu_used(cpu_before, cpu_after, pids)
        statuses = await asyncio.gather(*(p.wait() for p in processes))
        if any(statuses):
            raise BenchError(f"a publisher failed (exit statuses {statuses})")
        published = [json.loads(r.read_text(encoding="utf-8")) for r in reports]
        result.cpu_s["publishers"] = round(sum(p["cpu_s"] for p in published), 2)
        first_publish = min(p["started"] for p in published)
        result.publish_s = round(max(p["sent"] for p in published) - first_publish, 3)
        result.flood_s = round(end - first_publish, 3)
        result.heartbeats_per_s = round(result.received / (end - first_publish))
        result.controller_cpu_s = result.cpu_s.get("controller")
        if result.controller_cpu_s is not None:
            result.cpu_s_per_100k = per_100k(result.controller_cpu_s, result.received)

        await wait_written(controller)
        after_flood = time.time()
        after = await metrics_text(controller)
        rows_after = await asyncio.to_thread(count_rows, database)
        commits = await controller.commits()
        result.rows_by_table = {f"{t} (updated)": r for t, r in rows_updated(commits, go_at).items()}
        for table in INSERTED_TABLES:
            if rows_after[table] > rows_before[table]:
                result.rows_by_table[f"{table} (inserted)"] = rows_after[table] - rows_before[table]
        result.rows_total = sum(result.rows_by_table.values())
        result.rows_total_metrics = round(metric_value(after, FLUSH_ROWS) - metric_value(before, FLUSH_ROWS))
        result.batches = round(metric_value(after, FLUSHES) - metric_value(before, FLUSHES))
        if result.received:
            result.rows_per_heartbeat = round(result.rows_total / result.received, 5)
        result.peak_rss_mb = peak_rss_mb(controller.pid)

        # Idle: no traffic, no polling; the presence check runs every second over all N.
        if idle_s > 0:
            await asyncio.sleep(1.0)
            idle_pids = {"controller": [controller.pid]}
            idle_before, idle_start = cpu_snapshot(idle_pids), time.time()
            await asyncio.sleep(idle_s)
            idle_after = cpu_snapshot(idle_pids)
            result.idle_s = round(time.time() - idle_start, 2)
            result.idle_cpu_s = cpu_used(idle_before, idle_after, idle_pids)
            if "controller" in result.idle_cpu_s:
                # Two decimals of CPU seconds are too coarse for a few ms a second: read /proc again.
                spent = (cpu_seconds(controller.pid) or 0.0) - (idle_before.groups["controller"] or 0.0)
                result.idle_cpu_ms_per_s = round(1000 * spent / (time.time() - idle_start), 1)
                if result.controller_cpu_s is not None and result.flood_s is not None:
                    above = result.controller_cpu_s - result.idle_cpu_ms_per_s / 1000 * result.flood_s
                    result.cpu_s_per_100k_above_idle = per_100k(above, result.received)
            result.idle_rows = sum(rows_updated(await controller.commits(), after_flood).values())
        result.online_after = (await controller.state())["presence"].get("online", 0)
        return result
    finally:
        await tear_down(processes, profiler, controller, mosquitto)


# --- the command ------------------------------------------------------------------------------


def print_result(r: HeartbeatsResult) -> None:
    pace = f"{r.rate:,.0f} a second" if r.rate else "as fast as the publishers could"
    print()
    print(
        f"{r.heartbeats:,} heartbeats from {r.terminals:,} terminals ({r.publishers} publisher(s), {pace}), "
        f"fault share {r.fault_share} ({r.faults_planned:,} faults raised and cleared):"
    )
    rows = [
        ("heartbeats handled", f"{r.received:,} of {r.heartbeats:,} in {r.flood_s} s"),
        ("heartbeats a second", whole(r.heartbeats_per_s)),
        ("controller CPU", f"{r.controller_cpu_s} s"),
        ("CPU s per 100,000 heartbeats", f"{r.cpu_s_per_100k}"),
        ("  less the idle cost", f"{r.cpu_s_per_100k_above_idle}"),
        (
            "a core's share, N at 30 s",
            "—" if r.cpu_s_per_100k is None else f"{100 * core_share(r.cpu_s_per_100k, r.terminals):.1f}%",
        ),
        ("rows written per heartbeat", f"{r.rows_per_heartbeat}"),
        ("rows written", f"{r.rows_total:,} in {r.batches} batches (histogram: {r.rows_total_metrics})"),
        *((f"  {table}", f"{rows:,}") for table, rows in r.rows_by_table.items()),
        ("peak RSS (VmHWM)", f"{r.peak_rss_mb} MB"),
        ("idle CPU", f"{r.idle_cpu_ms_per_s} ms a second over {r.idle_s} s, {r.idle_rows} rows written"),
        ("online at the end", f"{r.online_after:,}"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    used = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in r.cpu_s.items())
    print(f"  CPU time from the go to the end of the flood: {used}")
    idle = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in r.idle_cpu_s.items())
    if idle:
        print(f"  CPU time while idle: {idle}")
    print(f"  setup (not measured): {r.setup_s}")
    if r.profile:
        print(f"  where the controller's time went ({r.profile['samples']} py-spy samples, all threads):")
        for name, pct in r.profile["by_category_pct"].items():
            print(f"    {pct:5.1f}%  {name}")
        print("  top functions (self time):")
        for name, pct in r.profile["top_functions_pct"].items():
            print(f"    {pct:5.1f}%  {name}")
    m = r.machine
    where = f"{m.get('cores')} × {m.get('cpu')}, Python {m.get('python')}"
    print(f"  machine: {where}, mosquitto {m.get('mosquitto')}")


RETRIES = 2


def run_once(args: argparse.Namespace) -> HeartbeatsResult:
    with tempfile.TemporaryDirectory(prefix="cunxiang-heartbeats-") as workdir:
        profile = args.profile.resolve() if args.profile is not None else None
        return asyncio.run(
            run_heartbeats(
                args.terminals, args.heartbeats, args.publishers, args.fault_share,
                args.rate, args.idle, profile, Path(workdir),
            )
        )  # fmt: skip


def run_heartbeats_cli(args: argparse.Namespace) -> int:
    """Run `cunxiang bench heartbeats`; 0 when every heartbeat was handled, 1 when not, 2 when it
    could not run."""
    if args.terminals < 1 or args.heartbeats < 1 or args.publishers < 1 or args.repeat < 1:
        print("--terminals, --heartbeats, --publishers and --repeat must be at least 1", file=sys.stderr)
        return 2
    try:
        fault_indices(args.terminals, args.heartbeats, args.fault_share)
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    results: list[HeartbeatsResult] = []
    failures = 0
    try:
        while len(results) < args.repeat:
            try:
                result = run_once(args)
            except MosquittoMissing:
                raise
            except (BenchError, httpx.HTTPError) as exc:
                # A run that fails (a free port taken by another process before the controller
                # bound it, say) is tried again with a fresh controller, twice at most.
                failures += 1
                if failures > RETRIES:
                    raise
                print(f"bench: {exc!r}; trying again", file=sys.stderr)
                continue
            print_result(result)
            results.append(result)
    except MosquittoMissing as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except (BenchError, httpx.HTTPError) as exc:
        print(f"bench: {exc!r}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if len(results) > 1:
        print_summary(results)
    if args.json is not None:
        runs = [r.as_json() for r in results]
        text = json.dumps(runs[0] if len(runs) == 1 else runs, indent=2)
        args.json.write_text(text + "\n", encoding="utf-8")
    ok = all(r.received == r.heartbeats for r in results)
    if not ok:
        print("bench: not every heartbeat reached the controller", file=sys.stderr)
    return 0 if ok else 1


def spread(values: list[float | None]) -> str:
    """min–max (median) of the values known."""
    known = sorted(v for v in values if v is not None)
    if not known:
        return "—"
    return f"{known[0]:g}–{known[-1]:g} ({statistics.median(known):g})"


def print_summary(results: list[HeartbeatsResult]) -> None:
    print()
    print(f"{len(results)} runs, min–max (median):")
    print(f"  CPU s per 100,000 heartbeats: {spread([r.cpu_s_per_100k for r in results])}")
    print(f"    less the idle cost:         {spread([r.cpu_s_per_100k_above_idle for r in results])}")
    print(f"  heartbeats a second:          {spread([r.heartbeats_per_s for r in results])}")
    print(f"  rows written per heartbeat:   {spread([r.rows_per_heartbeat for r in results])}")
    print(f"  idle CPU, ms a second:        {spread([r.idle_cpu_ms_per_s for r in results])}")
    print(f"  peak RSS, MB:                 {spread([r.peak_rss_mb for r in results])}")
    print(f"  other processes' CPU, s:      {spread([r.cpu_s.get('other processes') for r in results])}")
