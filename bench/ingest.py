"""`cunxiang bench ingest`: how many acknowledgements a second the controller gets into SQLite.

The fanout benchmark's acknowledgements come only as fast as simulated terminals make them. This
one measures the controller alone:

1. our own Mosquitto on a free port, a fresh SQLite file, and the real controller and app in a
   child process (`python -m bench.controller`, as in `cunxiang bench fanout`);
2. N terminals registered over the API in the villages of 4212 (none of them connects), and a
   broadcast to 4212 POSTed, so the controller tracks N deliveries in `sent`;
3. publisher processes (`python -m bench.publisher`, one paho-mqtt connection each) that have built
   and encoded every acknowledgement beforehand, `received`, `playing` and `completed` for each
   terminal (3N valid acks), publish them all at once, QoS 1, on the terminals' ack topics;
   with --hold the controller process is stopped (SIGSTOP) while they publish, so Mosquitto queues
   the acks for its session, and continued (SIGCONT) once the broker has them all: the controller
   then drains a standing queue, which is its capacity whatever the publishers' speed;
4. the controller's own progress polled until the broadcast is over in its memory and its writer
   has nothing left, then the delivery rows read back from the SQLite file: every one must be
   `completed` with its received, playing and finished times.

Reported: acks persisted per second from the writer's commit log (acks committed after the first
batch, divided by the time from the first commit to the last), the same from the first publish
(or the SIGCONT) to the last commit, the controller's CPU time per ack, its peak memory, and with
--profile a py-spy profile of the controller process during the flood, summarised by where the
time goes.
"""

import argparse
import asyncio
import json
import os
import secrets
import sqlite3
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.fanout import COUNTY, choose_fleet, read_deliveries, read_villages, register, wait_written
from bench.harness import (
    BenchError,
    ControllerProcess,
    Mosquitto,
    MosquittoMissing,
    Profiler,
    bench_alert,
    city_controller,
    controller_categories,
    cpu_snapshot,
    cpu_used,
    ingest_rate,
    machine_info,
    peak_rss_mb,
    tear_down,
    whole,
)

ACKS_PER_TERMINAL = 3


@dataclass
class IngestResult:
    terminals: int
    publishers: int
    hold: bool
    acks_published: int = 0
    acks_committed: int = 0
    commit_batches: int = 0
    acks_per_s: float | None = None
    acks_per_s_end_to_end: float | None = None
    publish_s: float | None = None
    drain_s: float | None = None
    commit_log: bool = True
    rows_verified: int = 0
    peak_rss_mb: float | None = None
    controller_cpu_us_per_ack: float | None = None
    cpu_s: dict[str, float] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


# --- the profile ------------------------------------------------------------------------------

CATEGORIES = controller_categories(
    ("decoding and validating acks (devices.messages)", ("decode (devices/messages.py",)),
    ("tracker (state machine, writer.update)", ("on_ack (controller/tracker.py",)),
)


# --- the run ----------------------------------------------------------------------------------


async def wait_files(paths: list[Path], processes: list[asyncio.subprocess.Process], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        if any(p.returncode is not None for p in processes):
            raise BenchError("a publisher exited before it was ready")
        if time.monotonic() > deadline:
            raise BenchError("the publishers were not ready in time")
        await asyncio.sleep(0.05)


async def wait_progress(controller: ControllerProcess, broadcast_id: str, done: Any, timeout: float) -> float:
    """Poll the controller's progress until `done(progress)`; returns when that was seen (epoch s)."""
    deadline = time.monotonic() + timeout
    while True:
        progress = (await controller.client.get(f"/bench/progress/{broadcast_id}")).json()
        if os.environ.get("BENCH_TRACE"):
            print(f"{time.time():.3f} {progress}", flush=True)
        if done(progress):
            return time.time()
        if time.monotonic() > deadline:
            raise BenchError(f"gave up waiting for the controller: {progress}")
        await asyncio.sleep(0.05)


def count_completed(database: Path, broadcast_id: str) -> int:
    with sqlite3.connect(database) as connection:
        query = "SELECT count(*) FROM delivery WHERE broadcast_id = ? AND state = 'completed'"
        return int(connection.execute(query, (broadcast_id,)).fetchone()[0])


async def wait_all_completed(database: Path, broadcast_id: str, n: int, since: float) -> float:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if await asyncio.to_thread(count_completed, database, broadcast_id) >= n:
            return time.time()
        await asyncio.sleep(0.02)
    return since


async def run_ingest(
    n: int, publishers: int, hold: bool, profile: Path | None, workdir: Path
) -> IngestResult:
    result = IngestResult(terminals=n, publishers=publishers, hold=hold)
    result.machine = machine_info("mosquitto", None)
    tag = secrets.token_hex(3)
    prefix = f"bench-{tag}"
    database = workdir / "bench.db"
    mosquitto = Mosquitto(workdir, max_queued=max(100_000, 2 * ACKS_PER_TERMINAL * n))
    controller: ControllerProcess | None = None
    processes: list[asyncio.subprocess.Process] = []
    profiler: Profiler | None = None
    try:
        await mosquitto.start()
        controller = city_controller(database, prefix, mosquitto.url)
        await controller.start()
        villages = await asyncio.to_thread(read_villages, database)
        specs = choose_fleet(villages, n)
        if len(specs) < n:
            raise BenchError(f"could only make {len(specs)} terminals")
        await register(controller.client, specs)
        body = bench_alert(COUNTY)
        response = await controller.client.post("/api/v1/broadcasts", json=body)
        if response.status_code != 201:
            raise BenchError(f"POST /api/v1/broadcasts answered {response.status_code}: {response.text}")
        broadcast_id = response.json()["id"]
        await wait_progress(
            controller, broadcast_id, lambda p: p["counts"].get("sent", 0) == n and not p["backlog"], 60
        )
        await wait_written(controller)

        go = workdir / "go"
        ready = [workdir / f"ready-{i}" for i in range(publishers)]
        reports = [workdir / f"published-{i}.json" for i in range(publishers)]
        ids = [s.terminal_id for s in specs]
        for i in range(publishers):
            ids_file = workdir / f"publisher-{i}.json"
            ids_file.write_text(json.dumps(ids[i::publishers]), encoding="utf-8")
            processes.append(
                await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "bench.publisher", "--broker", mosquitto.url, "--prefix", prefix,
                    "--command", broadcast_id, "--ids-file", str(ids_file), "--report", str(reports[i]),
                    "--ready-file", str(ready[i]), "--go-file", str(go), "--client-id", f"{prefix}-pub-{i}",
                )
            )  # fmt: skip
        await wait_files(ready, processes, 120)
        pids: dict[str, list[int]] = {
            "controller": [controller.pid],
            "publishers": [p.pid for p in processes],
        }
        if mosquitto.process is not None:
            pids["mosquitto"] = [mosquitto.process.pid]
        if profile is not None:
            profiler = Profiler(controller.pid, profile, CATEGORIES)
            await profiler.start()
        if hold:
            controller.pause()
        cpu_before = cpu_snapshot(pids)
        go.touch()
        statuses = await asyncio.gather(*(p.wait() for p in processes))
        if any(statuses):
            raise BenchError(f"a publisher failed (exit statuses {statuses})")
        published = [json.loads(r.read_text(encoding="utf-8")) for r in reports]
        result.acks_published = sum(p["messages"] for p in published)
        first_publish = min(p["started"] for p in published)
        result.publish_s = round(max(p["acked"] for p in published) - first_publish, 3)
        start = first_publish
        if hold:
            start = time.time()
            controller.resume()
        written = await wait_progress(controller, broadcast_id, lambda p: p["over"] and not p["backlog"], 120)
        result.cpu_s = cpu_used(cpu_before, cpu_snapshot(pids), pids)
        # The publishers have exited: their CPU time is what they reported (building the acks included).
        result.cpu_s["publishers"] = round(sum(p["cpu_s"] for p in published), 2)
        result.peak_rss_mb = peak_rss_mb(controller.pid)
        if profiler is not None:
            result.profile = await profiler.stop()
        rate = ingest_rate(await controller.commits(), since=first_publish)
        result.acks_committed, result.commit_batches, result.acks_per_s = rate.acks, rate.batches, rate.per_s
        rows = await asyncio.to_thread(read_deliveries, database, broadcast_id)
        result.rows_verified = sum(
            1
            for row in rows
            if row.state == "completed"
            and row.received_at is not None
            and row.playing_at is not None
            and row.finished_at is not None
        )
        end = rate.last_commit
        if end is None:
            # A controller without a commit log (before commit 6e0091f): the end is when a count of
            # its completed rows, asked every 20 ms from the moment its progress showed the
            # broadcast over, first finds them all.
            end, result.commit_log = await wait_all_completed(database, broadcast_id, n, written), False
            rows = await asyncio.to_thread(read_deliveries, database, broadcast_id)
            result.rows_verified = sum(1 for row in rows if row.state == "completed" and row.received_at)
            result.acks_committed = ACKS_PER_TERMINAL * result.rows_verified
        result.drain_s = round(end - start, 3)
        result.acks_per_s_end_to_end = round(result.acks_committed / (end - start))
        if result.acks_committed and "controller" in result.cpu_s:
            result.controller_cpu_us_per_ack = round(
                1e6 * result.cpu_s["controller"] / result.acks_committed, 1
            )
        return result
    finally:
        await tear_down(processes, profiler, controller, mosquitto)


def print_result(result: IngestResult) -> None:
    mode = "drained from a standing queue (--hold)" if result.hold else "while being published"
    print()
    print(
        f"{result.acks_published:,} acks for {result.terminals:,} terminals from {result.publishers} "
        f"publisher(s), {mode}:"
    )
    print(
        f"  acks persisted per second: {whole(result.acks_per_s)} (writer commit log: acks committed after "
        f"the first of {result.commit_batches} batches / first to last commit)"
    )
    since = "the SIGCONT" if result.hold else "the first publish"
    print(
        f"  end to end: {whole(result.acks_per_s_end_to_end)} acks/s ({result.acks_committed:,} committed "
        f"{result.drain_s} s after {since}); the publishers had them all PUBACKed after {result.publish_s} s"
    )
    print(
        f"  rows read back: {result.rows_verified:,} of {result.terminals:,} completed with all three times"
    )
    print(
        f"  controller: peak RSS (VmHWM) {result.peak_rss_mb} MB, {result.controller_cpu_us_per_ack} µs CPU "
        "per ack"
    )
    used = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in result.cpu_s.items())
    print(f"  CPU time from the go to the last commit: {used}")
    if result.profile:
        print(
            f"  where the controller's time went ({result.profile['samples']} py-spy samples, all threads):"
        )
        for name, pct in result.profile["by_category_pct"].items():
            print(f"    {pct:5.1f}%  {name}")
        print("  top functions (self time):")
        for name, pct in result.profile["top_functions_pct"].items():
            print(f"    {pct:5.1f}%  {name}")
    m = result.machine
    where = f"{m.get('cores')} × {m.get('cpu')}, Python {m.get('python')}"
    print(f"  machine: {where}, mosquitto {m.get('mosquitto')}")


def run_ingest_cli(args: argparse.Namespace) -> int:
    """Run `cunxiang bench ingest`; 0 when every ack was persisted, 1 when not, 2 when it could not run."""
    if args.acks < 1 or args.publishers < 1:
        print("--acks and --publishers must be at least 1", file=sys.stderr)
        return 2
    try:
        with tempfile.TemporaryDirectory(prefix="cunxiang-ingest-") as workdir:
            profile = args.profile.resolve() if args.profile is not None else None
            result = asyncio.run(run_ingest(args.acks, args.publishers, args.hold, profile, Path(workdir)))
    except MosquittoMissing as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except (BenchError, httpx.HTTPError) as exc:
        print(f"bench: {exc!r}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print_result(result)
    if args.json is not None:
        args.json.write_text(json.dumps(result.as_json(), indent=2) + "\n", encoding="utf-8")
    ok = result.rows_verified == result.terminals and result.acks_committed == result.acks_published
    if not ok:
        print("bench: not every acknowledgement was persisted", file=sys.stderr)
    return 0 if ok else 1
