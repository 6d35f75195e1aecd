"""What the benchmarks share: the machine, our own Mosquitto, the controller in a child process,
CPU and memory from /proc, and the arithmetic of the figures (kept pure, so it is unit-tested)."""

import asyncio
import bisect
import contextlib
import json
import math
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import httpx

from controller.accounts import Role
from controller.embedded_broker import free_port
from controller.settings import load_settings
from controller.signing_keys import KEYSET_FILE
from deploy.admin import issue_api_key
from deploy.mosquitto import MosquittoError, mosquitto_binary, run_mosquitto, stop_process

HOST = "127.0.0.1"
DELIVERY_TABLE = "delivery"


class BenchError(Exception):
    """The benchmark could not run (as opposed to: it ran and not every terminal completed)."""


class MosquittoMissing(BenchError):
    pass


# --- the figures ------------------------------------------------------------------------------


def quantile(values: list[float], q: float, n: int) -> float | None:
    """The time by which a fraction q of n had happened, from sorted `values`; None if too few.

    With n = 10,000, q = 0.999 is the 9,990th value: fewer than n values can still give it.
    """
    k = max(1, math.ceil(round(q * n, 9)))
    return round(values[k - 1], 3) if len(values) >= k else None


@dataclass(frozen=True)
class IngestRate:
    """Acknowledgements committed to the database, from the writer's own commit log."""

    acks: int
    """updates of delivery rows committed in the batches counted (one per acknowledgement applied)"""
    batches: int
    first_commit: float | None
    last_commit: float | None
    per_s: float | None
    """acks committed after the first batch, divided by the time from the first commit to the last"""


def ingest_rate(commits: list[dict[str, Any]], since: float, table: str = DELIVERY_TABLE) -> IngestRate:
    """The rate at which acknowledgements reached the database, from `GET /bench/commits` entries
    (`at`: epoch s just after COMMIT; `updates`: updates recorded per table) committed after `since`.

    The first batch's acks are left out of the rate, because the time they took to gather is not
    between two commits: rate = (acks − acks of the first batch) / (last commit − first commit).
    """
    batches = sorted(
        (c for c in commits if c["at"] >= since and c["updates"].get(table, 0) > 0), key=lambda c: c["at"]
    )
    if not batches:
        return IngestRate(0, 0, None, None, None)
    acks = sum(c["updates"][table] for c in batches)
    first, last = batches[0]["at"], batches[-1]["at"]
    span = last - first
    per_s = (acks - batches[0]["updates"][table]) / span if span > 0 else None
    return IngestRate(acks, len(batches), first, last, None if per_s is None else round(per_s))


def persisted_at(times: list[float], commits: list[dict[str, Any]]) -> list[float | None]:
    """When each update recorded at one of `times` (epoch s) was committed: by the first batch taken
    at or after it (`started`, epoch s), which holds everything recorded before it was taken. None
    for an update no commit (with a `started`) covers."""
    taken = sorted((c["started"], c["at"]) for c in commits if c.get("started") is not None)
    starts = [start for start, _at in taken]
    found: list[float | None] = []
    for t in times:
        index = bisect.bisect_left(starts, t)
        found.append(taken[index][1] if index < len(taken) else None)
    return found


# --- machine and processes --------------------------------------------------------------------


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


def package_version(name: str) -> str:
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
        "amqtt": package_version("amqtt"),
        "aiomqtt": package_version("aiomqtt"),
        "paho-mqtt": package_version("paho-mqtt"),
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


def machine_busy_seconds() -> tuple[float, float, float] | None:
    """CPU time spent by the whole machine so far, all cores; the part of it in interrupts (irq +
    softirq: with everything on one machine, mostly loopback TCP); and the time the hypervisor gave
    a virtual machine's cores to someone else (steal): from Linux /proc/stat."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    ticks = [int(v) for v in first[1:9]]
    idle = ticks[3] + ticks[4]
    return (sum(ticks) - idle) / _TICKS, (ticks[5] + ticks[6]) / _TICKS, ticks[7] / _TICKS


def all_processes() -> dict[int, tuple[str, float]]:
    """Every process's command name and CPU seconds so far."""
    found: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.find("(") + 1 : stat.rfind(")")]
        fields = stat.rsplit(")", 1)[1].split()
        found[int(entry.name)] = (name, (int(fields[11]) + int(fields[12])) / _TICKS)
    return found


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident memory so far (VmHWM, Linux /proc), in MB (10^6 bytes)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) * 1024 / 1e6, 1)
    return None


@dataclass
class CpuSnapshot:
    groups: dict[str, float | None]
    machine: tuple[float, float, float] | None
    processes: dict[int, tuple[str, float]]


def cpu_snapshot(pids: dict[str, list[int]]) -> CpuSnapshot:
    groups: dict[str, float | None] = {}
    for name, group in pids.items():
        values = [cpu_seconds(pid) for pid in group]
        groups[name] = None if any(v is None for v in values) else sum(v for v in values if v is not None)
    return CpuSnapshot(groups, machine_busy_seconds(), all_processes())


def cpu_used(before: CpuSnapshot, after: CpuSnapshot, pids: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds between two snapshots: per process group of ours, in interrupts (`kernel irq`),
    taken by the hypervisor (`stolen by the hypervisor`: a disturbed run on a virtual machine),
    by every other process (`other processes`), and the busiest other one by name."""
    used: dict[str, float] = {}
    for name, start in before.groups.items():
        end = after.groups.get(name)
        if start is not None and end is not None:
            used[name] = round(end - start, 2)
    if before.machine is not None and after.machine is not None:
        ours = {pid for group in pids.values() for pid in group}
        others: dict[str, float] = {}
        for pid, (name, seconds) in after.processes.items():
            if pid in ours:
                continue
            delta = seconds - before.processes.get(pid, (name, 0.0))[1]
            if delta > 0:
                others[name] = others.get(name, 0.0) + delta
        used["kernel irq"] = round(after.machine[1] - before.machine[1], 2)
        used["stolen by the hypervisor"] = round(after.machine[2] - before.machine[2], 2)
        used["other processes"] = round(sum(others.values()), 2)
        if others:
            busiest = max(others, key=lambda n: others[n])
            used[f"(of which {busiest})"] = round(others[busiest], 2)
    return used


class Mosquitto:
    """Our own Mosquitto on a free port, configured for a benchmark, stopped afterwards."""

    def __init__(self, workdir: Path, max_queued: int = 100_000) -> None:
        self.workdir = workdir
        self.port = free_port(HOST)
        self.max_queued = max_queued
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self.port}"

    async def start(self) -> None:
        if mosquitto_binary() is None:
            raise MosquittoMissing(
                "mosquitto is not installed (looked on PATH and in /usr/sbin): install it "
                "(apt-get install mosquitto) or give --mosquitto-url mqtt://host:port"
            )
        config = (
            f"listener {self.port} {HOST}\n"
            "allow_anonymous true\n"
            f"max_queued_messages {self.max_queued}\n"
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


async def end_process(process: asyncio.subprocess.Process, grace: float) -> None:
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


class ControllerProcess:
    """The real app under uvicorn in a child process (`python -m bench.controller`)."""

    def __init__(self, overrides: dict[str, Any]) -> None:
        self.port = free_port(HOST)
        keys = overrides.get("signing_key_dir") or tempfile.mkdtemp(prefix="cunxiang-bench-keys-")
        self.overrides = {**overrides, "http_host": HOST, "signing_key_dir": str(keys)}
        self.process: asyncio.subprocess.Process | None = None
        self.client = httpx.AsyncClient(base_url=f"http://{HOST}:{self.port}", timeout=120)

    @property
    def keyset_path(self) -> Path:
        """The public keys its commands are signed with (written when it starts), for terminals."""
        return Path(self.overrides["signing_key_dir"]) / KEYSET_FILE

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self, timeout: float = 60.0) -> None:
        if "X-API-Key" not in self.client.headers:
            settings = load_settings(**self.overrides)
            name = f"bench-{secrets.token_hex(4)}"
            key = await asyncio.to_thread(issue_api_key, settings, name, settings.county_region, Role.ADMIN)
            self.client.headers["X-API-Key"] = key
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.controller",
            "--port",
            str(self.port),
            "--settings",
            json.dumps(self.overrides),
            "--log-level",
            os.environ.get("CUNXIANG_BENCH_CONTROLLER_LOG", "WARNING"),
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.returncode is not None:
                raise BenchError(f"the controller exited with status {self.process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                state = (await self.client.get("/bench/state")).json()
                if state["connected"]:
                    return
            if time.monotonic() > deadline:
                raise BenchError(f"the controller was not connected to its broker within {timeout:.0f} s")
            await asyncio.sleep(0.1)

    async def state(self) -> dict[str, Any]:
        response = await self.client.get("/bench/state")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    async def commits(self) -> list[dict[str, Any]]:
        response = await self.client.get("/bench/commits")
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()
        return result

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    async def stop(self) -> None:
        await self.client.aclose()
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGCONT)
            await end_process(self.process, 30.0)


MQTT_RECEIVE = "MQTT receive (controller.mqtt_client, devices.mqtt_wire; paho-mqtt, aiomqtt)"

Categories = list[tuple[str, tuple[str, ...]]]
"""(name, substrings of frames that put a stack sample in it), first match wins"""


def controller_categories(*specific: tuple[str, tuple[str, ...]]) -> Categories:
    """Where a controller's samples count: the writer thread and HTTP first, then what the
    benchmark is about (`specific`), then the rest of the message path, outermost last (a sample
    in json inside pydantic inside handle_message counts as decoding, not as handle_message)."""
    return [
        ("database writer thread (SQLAlchemy, sqlite3)", ("_write (controller/writer.py",)),
        ("HTTP (uvicorn, FastAPI: the benchmark's polling)", ("uvicorn/", "fastapi/", "starlette/")),
        *specific,
        ("metrics (prometheus_client)", ("prometheus_client/",)),
        ("rest of handle_message (topic parsing, time)", ("handle_message (controller/service.py",)),
        (MQTT_RECEIVE, ("controller/mqtt_client.py", "devices/mqtt_wire.py", "paho/", "aiomqtt/")),
        ("asyncio event loop", ("asyncio/",)),
    ]


def summarise_profile(
    raw: str, categories: Categories, top: int = 12, other: str = "other"
) -> dict[str, Any]:
    """Summarise py-spy's raw output (`frame;frame;... count` lines, outermost frame first) by
    `categories` and by innermost function, in percent of the samples."""
    total = 0
    by_category: Counter[str] = Counter()
    by_leaf: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        for name, needles in categories:
            if any(needle in frame for frame in frames for needle in needles):
                by_category[name] += count
                break
        else:
            by_category[other] += count
        leaf = frames[-1]
        by_leaf[leaf.rsplit(":", 1)[0] + ")" if ":" in leaf else leaf] += count
    if not total:
        return {}

    def share(count: int) -> float:
        return round(100 * count / total, 1)

    return {
        "samples": total,
        "by_category_pct": {name: share(c) for name, c in by_category.most_common()},
        "top_functions_pct": {name: share(c) for name, c in by_leaf.most_common(top)},
    }


def whole(value: float | None) -> str:
    """A figure for a table: thousands separated, no decimals, a dash when there is none."""
    return "—" if value is None else f"{value:,.0f}"


def city_controller(database: Path, prefix: str, mqtt_url: str) -> ControllerProcess:
    """A controller for the whole bundled city (4212) on its own SQLite file, topic prefix and
    controller id, on the broker at `mqtt_url`: what every Mosquitto benchmark measures."""
    return ControllerProcess(
        {
            "database_url": f"sqlite:///{database}",
            "controller_id": prefix,
            "topic_prefix": prefix,
            "mqtt_url": mqtt_url,
            "county_region": "4212",
        }
    )


class Profiler:
    """`py-spy record` of one process, non-blocking (it does not pause the process to sample)."""

    def __init__(self, pid: int, output: Path, categories: Categories) -> None:
        self.pid = pid
        self.output = output
        self.categories = categories
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        binary = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
        if binary is None:
            raise BenchError("--profile needs py-spy (pip install py-spy)")
        self.process = await asyncio.create_subprocess_exec(
            binary,
            "record",
            "--pid",
            str(self.pid),
            "--nonblocking",
            "--rate",
            "250",
            "--format",
            "raw",
            "--output",
            str(self.output),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await asyncio.sleep(1.0)  # py-spy attaches

    async def stop(self) -> dict[str, Any]:
        if self.process is None:
            return {}
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(self.process.wait(), 30)
        except TimeoutError:
            self.process.kill()
        try:
            return summarise_profile(self.output.read_text(encoding="utf-8"), self.categories)
        except OSError:
            return {}


async def tear_down(
    processes: list[asyncio.subprocess.Process],
    profiler: Profiler | None,
    controller: ControllerProcess | None,
    mosquitto: Mosquitto,
) -> None:
    """End a benchmark's helper processes, profiler, controller and Mosquitto, in that order."""
    for process in processes:
        await end_process(process, 5.0)
    if profiler is not None and profiler.process is not None and profiler.process.returncode is None:
        await profiler.stop()
    if controller is not None:
        await controller.stop()
    await mosquitto.stop()


def bench_alert(region: str) -> dict[str, Any]:
    """The alert every benchmark sends: level I, so nothing pre-empts it, and `test` (a technical
    test of the system), so the two-person rule does not hold it."""
    return {
        "kind": "emergency",
        "level": 1,
        "status": "test",
        "regions": [region],
        "text": "bench",
        "expires_in": 600,
    }
