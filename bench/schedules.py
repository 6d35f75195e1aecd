"""`cunxiang bench schedules`: how close to their time scheduled programmes are published.

Each scenario, start to finish (fresh database and topic prefix each time, one Mosquitto for all):

1. the real controller in a child process (`python -m bench.controller`, county 4212), with our own
   Mosquitto; `--per-village` terminals registered in each target village (they never connect:
   what is measured is when the command is published, not when terminals play it);
2. one programme from text (`POST /api/v1/programmes`, spoken by eSpeak NG), and N schedules that
   play it once, each in its own village of 4212 (villages are reused beyond 1,096). N − 1 are
   written straight into the database and the last is created with `POST /api/v1/schedules`,
   which makes the scheduler read them all again: creating all N over the API takes tens of
   minutes at N = 1,000, because every save compares the new schedule with every other one
   (docs/performance.md has the figures);
3. a listener process (`python -m bench.command_listener`) subscribed to
   `<prefix>/v1/region/+/cmd` (QoS 1) notes when each command arrives;
4. scenarios: `burst` (all N due at the same second, `--lead-s` after the schedules are saved),
   `spread` (due uniformly over `--spread-s`), and `restart-term-45`, `restart-kill-10`... (all N
   due at one second T; the controller is stopped with SIGTERM or SIGKILL that many seconds before
   T and started again at once);
5. lateness of each run = its command's arrival at the listener − its due time; p50/p99/max over
   the N runs (a run that never arrived counts as not yet happened: p99 needs 99% of N).

Also reported: the controller's CPU time from 35 s before the (first) due time to 5 s after the
last, its peak memory (VmHWM), the other processes' CPU, and from the database how the runs ended
(`schedule_run.outcome`) and when they were claimed (staging starts with the claim).
"""

import argparse
import asyncio
import contextlib
import json
import math
import os
import secrets
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlmodel import Session

from bench.fanout import COUNTY, read_villages, register
from bench.harness import (
    BenchError,
    ControllerProcess,
    Mosquitto,
    MosquittoMissing,
    Profiler,
    cpu_snapshot,
    cpu_used,
    end_process,
    machine_info,
    peak_rss_mb,
    quantile,
)
from bench.ingest import CATEGORIES
from controller.db import make_engine
from controller.schedules import ScheduleSpec, to_schedule
from devices.messages import now_utc
from simulator.fleet import fleet_for_villages

ZONE = "Asia/Shanghai"
SCENARIOS = (
    "burst",
    "spread",
    "restart-term-45",
    "restart-term-10",
    "restart-kill-45",
    "restart-kill-10",
)
PROGRAMME = {"title": "天气预报", "text": "各位村民，今天白天晴，气温十五到二十五度，东南风二级。"}
STAGING_MARGIN_S = 35.0
"""CPU is counted from this long before the first due time (the lookahead is 30 s)"""
AFTER_S = 5.0
"""and until this long after the last one, when the listener is read"""
PROFILE_BEFORE_S = 2.0
"""--profile: py-spy starts this long before the first run (it takes about 1 s to attach)"""


# --- the figures (pure) -----------------------------------------------------------------------


@dataclass(frozen=True)
class Arrival:
    """One command as the listener noted it."""

    at: float
    region: str
    command_id: str | None
    issued_at: str | None


@dataclass(frozen=True)
class Lateness:
    runs: int
    arrived: int
    p50_s: float | None
    p99_s: float | None
    max_s: float | None
    min_s: float | None
    within_1s: int
    duplicates: int
    """copies of a command already noted (QoS 1 may deliver twice; a republish would too)"""
    unexpected: int
    """commands on a topic no run was due on, or more of them than runs due there"""


def region_of(topic: str) -> str:
    """`<prefix>/v1/region/<code>/cmd` → `<code>`."""
    parts = topic.split("/")
    if len(parts) < 3 or parts[-1] != "cmd" or parts[-3] != "region":
        raise ValueError(f"not a region command topic: {topic!r}")
    return parts[-2]


def parse_arrivals(lines: list[str]) -> list[Arrival]:
    arrivals = []
    for line in lines:
        if not line.strip():
            continue
        entry = json.loads(line)
        arrivals.append(
            Arrival(entry["at"], region_of(entry["topic"]), entry.get("id"), entry.get("issued_at"))
        )
    return arrivals


def lateness(due: list[tuple[str, float]], arrivals: list[Arrival]) -> Lateness:
    """Match each run (region, due epoch s) to a command that arrived on its region's topic and
    measure arrival − due. Several runs due in one region are matched in order of time with the
    distinct commands that arrived there (first copy of each id)."""
    runs_by_region: dict[str, list[float]] = {}
    for region, at in due:
        runs_by_region.setdefault(region, []).append(at)
    seen: set[str] = set()
    firsts: dict[str, list[float]] = {}
    duplicates = 0
    for arrival in sorted(arrivals, key=lambda a: a.at):
        key = arrival.command_id or f"{arrival.region}@{arrival.at}"
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        firsts.setdefault(arrival.region, []).append(arrival.at)
    late: list[float] = []
    unexpected = 0
    for region, got in firsts.items():
        wanted = sorted(runs_by_region.get(region, []))
        late.extend(a - d for a, d in zip(sorted(got), wanted, strict=False))
        unexpected += max(0, len(got) - len(wanted))
    late.sort()
    n = len(due)
    return Lateness(
        runs=n,
        arrived=len(late),
        p50_s=quantile(late, 0.5, n),
        p99_s=quantile(late, 0.99, n),
        max_s=round(late[-1], 3) if len(late) == n and late else None,
        min_s=round(late[0], 3) if late else None,
        within_1s=sum(1 for x in late if x <= 1.0),
        duplicates=duplicates,
        unexpected=unexpected,
    )


def due_times(scenario: str, n: int, first: float, spread_s: float) -> list[float]:
    """Each run's due time (epoch s, whole seconds): all at `first`, or for `spread` uniformly
    over `spread_s` seconds from `first`."""
    if scenario != "spread" or n == 1:
        return [first] * n
    return [first + math.floor(i * spread_s / (n - 1)) for i in range(n)]


@dataclass(frozen=True)
class Restart:
    signal: signal.Signals
    before_s: float


def restart_of(scenario: str) -> Restart | None:
    """`restart-term-45` → SIGTERM 45 s before the due time; None for other scenarios; raises
    ValueError for a malformed restart scenario."""
    if not scenario.startswith("restart-"):
        return None
    parts = scenario.split("-")
    signals = {"term": signal.SIGTERM, "kill": signal.SIGKILL}
    if len(parts) != 3 or parts[1] not in signals or not parts[2].isdigit():
        raise ValueError(f"not a restart scenario: {scenario!r} (restart-<term|kill>-<seconds>)")
    return Restart(signals[parts[1]], float(parts[2]))


def known_scenario(scenario: str) -> bool:
    if scenario in ("burst", "spread"):
        return True
    try:
        return restart_of(scenario) is not None
    except ValueError:
        return False


def targets(villages: list[str], n: int) -> list[str]:
    """The village of each of n schedules: every village once, then round again."""
    return [villages[i % len(villages)] for i in range(n)]


def local_start(due: float, zone: str = ZONE) -> str:
    """The wall-clock time (no offset) in `zone` of epoch second `due`, as a schedule's `start`."""
    moment = datetime.fromtimestamp(due, UTC).astimezone(ZoneInfo(zone))
    return moment.replace(tzinfo=None).isoformat()


def summary(values: list[float | None]) -> dict[str, float | None]:
    """Min and median of repeated runs (None if any run lacks the figure)."""
    if not values or any(v is None for v in values):
        return {"min": None, "median": None, "max": None}
    ordered = sorted(v for v in values if v is not None)
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return {"min": ordered[0], "median": round(median, 3), "max": ordered[-1]}


# --- one scenario -----------------------------------------------------------------------------


@dataclass
class ScenarioResult:
    scenario: str
    schedules: int
    lateness: dict[str, Any] = field(default_factory=dict)
    due_first: str | None = None
    last_post_s: float | None = None
    """how long the POST of the Nth schedule took (it is compared with the N − 1 others)"""
    outcomes: dict[str, int] = field(default_factory=dict)
    claims_s: dict[str, float | None] = field(default_factory=dict)
    """first and last claim of a run (staging starts), seconds relative to its due time"""
    stopped_s: float | None = None
    """the controller was signalled this long before T (restart scenarios)"""
    up_again_s: float | None = None
    """and connected again this long before T (negative: after)"""
    cpu_s: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float | None = None
    profile: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def write_schedules(database: Path, programme_id: str, runs: list[tuple[str, float]]) -> None:
    """Store schedules as `POST /api/v1/schedules` would (same checks and rows), without the
    comparison with every other schedule."""
    engine = make_engine(f"sqlite:///{database}")
    try:
        with Session(engine) as session:
            for i, (region, due) in enumerate(runs):
                spec = ScheduleSpec(**schedule_body(i, programme_id, region, due))
                session.add(to_schedule(spec, f"s{secrets.token_hex(8)}", ZONE, now_utc()))
            session.commit()
    finally:
        engine.dispose()


def schedule_body(i: int, programme_id: str, region: str, due: float) -> dict[str, Any]:
    return {
        "name": f"bench {i:05d} {region}",
        "programme_id": programme_id,
        "regions": [region],
        "start": local_start(due),
        "rrule": None,
        "timezone": ZONE,
        "expires_in_s": 1800,
    }


def read_runs(database: Path) -> tuple[Counter[str], list[tuple[float, float]]]:
    """Outcomes of the schedule runs, and (claimed, due) epoch seconds of each."""

    def epoch(text: str) -> float:
        moment = datetime.fromisoformat(text)
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()

    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT outcome, started_at, due_at FROM schedule_run").fetchall()
    return Counter(r[0] for r in rows), [(epoch(r[1]), epoch(r[2])) for r in rows]


async def wait_file(path: Path, process: asyncio.subprocess.Process, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(path.exists):
        if process.returncode is not None:
            raise BenchError("the command listener exited before it was ready")
        if time.monotonic() > deadline:
            raise BenchError("the command listener was not subscribed in time")
        await asyncio.sleep(0.05)


async def sleep_until(epoch: float) -> None:
    delay = epoch - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


async def run_scenario(
    scenario: str,
    n: int,
    mosquitto: Mosquitto,
    workdir: Path,
    *,
    lead_s: float,
    spread_s: float,
    per_village: int,
    profile: Path | None,
) -> ScenarioResult:
    result = ScenarioResult(scenario=scenario, schedules=n)
    restart = restart_of(scenario)
    prefix = f"bench-{secrets.token_hex(3)}"
    database = workdir / "bench.db"
    overrides = {
        "database_url": f"sqlite:///{database}",
        "controller_id": prefix,
        "topic_prefix": prefix,
        "mqtt_url": mosquitto.url,
        "county_region": COUNTY,
        "media_dir": str(workdir / "media"),
    }
    controller = ControllerProcess(overrides)
    listener: asyncio.subprocess.Process | None = None
    profiler: Profiler | None = None
    arrivals_file = workdir / "arrivals.jsonl"
    try:
        await controller.start()
        villages = await asyncio.to_thread(read_villages, database)
        where = targets(villages, n)
        await register(controller.client, fleet_for_villages(sorted(set(where)), per_village))
        response = await controller.client.post("/api/v1/programmes", json=PROGRAMME)
        if response.status_code != 201:
            raise BenchError(f"POST /api/v1/programmes answered {response.status_code}: {response.text}")
        programme_id = response.json()["id"]
        ready = workdir / "listener-ready"
        listener = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.command_listener", "--broker", mosquitto.url, "--prefix", prefix,
            "--out", str(arrivals_file), "--ready-file", str(ready), "--client-id", f"{prefix}-listener",
        )  # fmt: skip
        await wait_file(ready, listener, 30)

        # The last POST is compared with the N − 1 others: about 4-5 s at N = 1,000 on our machine.
        first = math.ceil(time.time() + lead_s + 0.005 * n)
        dues = due_times(scenario, n, first, spread_s)
        runs = list(zip(where, (float(d) for d in dues), strict=True))
        await asyncio.to_thread(write_schedules, database, programme_id, runs[:-1])
        posted = time.monotonic()
        response = await controller.client.post(
            "/api/v1/schedules", json=schedule_body(n - 1, programme_id, *runs[-1])
        )
        result.last_post_s = round(time.monotonic() - posted, 3)
        if response.status_code != 201:
            raise BenchError(f"POST /api/v1/schedules answered {response.status_code}: {response.text}")
        result.due_first = datetime.fromtimestamp(first, UTC).isoformat()
        # Measured from before staging starts, or before the stop if that comes earlier.
        since = first - max(STAGING_MARGIN_S, restart.before_s + 1 if restart is not None else 0.0)
        if time.time() > since:
            raise BenchError(
                f"the schedules were saved only {first - time.time():.1f} s before their time: raise --lead-s"
            )

        await sleep_until(since)
        pids = {"controller": [controller.pid], "listener": [listener.pid]}
        if mosquitto.process is not None:
            pids["mosquitto"] = [mosquitto.process.pid]
        before = cpu_snapshot(pids)
        earlier: dict[str, float] = {}
        if restart is not None:
            await sleep_until(first - restart.before_s)
            stopped = time.time()
            result.stopped_s = round(first - stopped, 3)
            assert controller.process is not None
            earlier = cpu_used(before, cpu_snapshot(pids), pids)
            os.kill(controller.pid, restart.signal)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(controller.process.wait(), 30)
            await controller.stop()
            controller = ControllerProcess(overrides)
            await controller.start()
            result.up_again_s = round(first - time.time(), 3)
            pids["controller"] = [controller.pid]
            before = cpu_snapshot(pids)
        if profile is not None:
            # From 1 s before the first run (py-spy takes about 1 s to attach) to 2 s after the last.
            await sleep_until(first - PROFILE_BEFORE_S)
            profiler = Profiler(controller.pid, profile, CATEGORIES)
            await profiler.start()
            await sleep_until(max(dues) + 2.0)
            result.profile = await profiler.stop()
        await sleep_until(max(dues) + AFTER_S)
        used = cpu_used(before, cpu_snapshot(pids), pids)
        result.cpu_s = {k: round(v + earlier.get(k, 0.0), 2) for k, v in used.items()}
        result.peak_rss_mb = peak_rss_mb(controller.pid)
        arrived = parse_arrivals(arrivals_file.read_text(encoding="utf-8").splitlines())
        result.lateness = asdict(lateness(runs, arrived))
        outcomes, claims = await asyncio.to_thread(read_runs, database)
        result.outcomes = dict(outcomes)
        offsets = sorted(claimed - due for claimed, due in claims)
        result.claims_s = {
            "first": round(offsets[0], 3) if offsets else None,
            "last": round(offsets[-1], 3) if offsets else None,
        }
        return result
    finally:
        if profiler is not None and profiler.process is not None and profiler.process.returncode is None:
            await profiler.stop()
        if listener is not None:
            await end_process(listener, 5.0)
        await controller.stop()


async def run_schedules(
    n: int,
    scenarios: list[str],
    repeat: int,
    *,
    lead_s: float,
    spread_s: float,
    per_village: int,
    profile: Path | None,
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "schedules": n,
        "repeat": repeat,
        "lead_s": lead_s,
        "spread_s": spread_s,
        "per_village": per_village,
        "machine": machine_info("mosquitto", None),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="cunxiang-bench-schedules-") as tmp:
        root = Path(tmp)
        mosquitto = Mosquitto(root)
        await mosquitto.start()
        try:
            for round_ in range(repeat):
                for scenario in scenarios:
                    workdir = root / f"{scenario}-{round_}"
                    workdir.mkdir()
                    each = (
                        None
                        if profile is None
                        else profile.with_name(f"{profile.name}-{scenario}-{round_}.txt")
                    )
                    try:
                        result = await run_scenario(
                            scenario, n, mosquitto, workdir,
                            lead_s=lead_s, spread_s=spread_s, per_village=per_village, profile=each,
                        )  # fmt: skip
                    except BenchError as exc:
                        result = ScenarioResult(scenario=scenario, schedules=n, error=str(exc))
                    report["runs"].append(asdict(result))
                    print_run(result)
        finally:
            await mosquitto.stop()
    report["summary"] = summarise(report["runs"])
    return report


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per scenario: min/median/max over the runs of p50, p99 and max lateness, and controller CPU."""
    by_scenario: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_scenario.setdefault(run["scenario"], []).append(run)
    out: dict[str, Any] = {}
    for scenario, group in by_scenario.items():
        ok = [r for r in group if r["error"] is None]
        out[scenario] = {
            "runs": len(group),
            "failed": len(group) - len(ok),
            "arrived": [r["lateness"]["arrived"] for r in ok],
            "p50_s": summary([r["lateness"]["p50_s"] for r in ok]),
            "p99_s": summary([r["lateness"]["p99_s"] for r in ok]),
            "max_s": summary([r["lateness"]["max_s"] for r in ok]),
            "controller_cpu_s": summary([r["cpu_s"].get("controller") for r in ok]),
            "other_cpu_s": summary([r["cpu_s"].get("other processes") for r in ok]),
            "peak_rss_mb": summary([r["peak_rss_mb"] for r in ok]),
            "p99_within_1s": all(
                r["lateness"]["p99_s"] is not None and r["lateness"]["p99_s"] <= 1.0 for r in ok
            )
            and bool(ok),
        }
    return out


# --- output -----------------------------------------------------------------------------------


def _s(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def print_run(result: ScenarioResult) -> None:
    if result.error is not None:
        print(f"{result.scenario}: could not run: {result.error}", flush=True)
        return
    late = result.lateness
    restart = ""
    if result.stopped_s is not None:
        restart = f" stopped T-{result.stopped_s:.1f}s, up again T-{result.up_again_s:.1f}s;"
    print(
        f"{result.scenario}: {late['arrived']}/{late['runs']} arrived; lateness p50 {_s(late['p50_s'])} "
        f"p99 {_s(late['p99_s'])} max {_s(late['max_s'])} min {_s(late['min_s'])} s; "
        f"within 1 s {late['within_1s']};{restart} claims {result.claims_s}; outcomes {result.outcomes}; "
        f"cpu {result.cpu_s}; peak RSS {result.peak_rss_mb} MB; last POST {result.last_post_s} s",
        flush=True,
    )


def print_table(report: dict[str, Any]) -> None:
    print()
    print(
        f"{report['schedules']:,} schedules, {report['repeat']} run(s) per scenario; min/median/max over runs"
    )
    header = ("scenario", "runs", "arrived", "p50 s", "p99 s", "max s", "ctl CPU s", "others CPU s", "p99≤1s")
    print("{:<16} {:>4} {:>16} {:>20} {:>20} {:>20} {:>17} {:>17} {:>6}".format(*header))

    def trio(figures: dict[str, float | None]) -> str:
        return f"{_s(figures['min'])}/{_s(figures['median'])}/{_s(figures['max'])}"

    for scenario, s in report["summary"].items():
        arrived = ",".join(str(a) for a in s["arrived"]) or "—"
        print(
            f"{scenario:<16} {s['runs']:>4} {arrived:>16} {trio(s['p50_s']):>20} {trio(s['p99_s']):>20} "
            f"{trio(s['max_s']):>20} {trio(s['controller_cpu_s']):>17} {trio(s['other_cpu_s']):>17} "
            f"{'yes' if s['p99_within_1s'] else 'NO':>6}"
        )
    rss = [r["peak_rss_mb"] for r in report["runs"] if r["peak_rss_mb"] is not None]
    if rss:
        print(f"controller peak RSS: {min(rss)}–{max(rss)} MB")


def run_schedules_cli(args: argparse.Namespace) -> int:
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in scenarios if not known_scenario(s)]
    if unknown or args.schedules < 1 or args.repeat < 1:
        print(f"unknown scenario(s) {unknown}; e.g. {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(
            run_schedules(
                args.schedules,
                scenarios,
                args.repeat,
                lead_s=args.lead_s,
                spread_s=args.spread_s,
                per_village=args.per_village,
                profile=args.profile,
            )
        )
    except MosquittoMissing as exc:
        print(exc, file=sys.stderr)
        return 2
    print_table(report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    ok = all(s["p99_within_1s"] and not s["failed"] for s in report["summary"].values())
    return 0 if ok else 1
