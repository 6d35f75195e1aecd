"""Kill the controller (SIGKILL) in the middle of a broadcast, start it again: nothing is lost.

Real processes: Mosquitto, `cunxiang serve` and `cunxiang simulate`, over real TCP and a real
SQLite file.
"""

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from controller.embedded_broker import free_port
from tests.processes import clean_env, cunxiang, follow, wait_for

CITY = "4212"  # 咸宁市: one terminal in each of its 1,096 villages
TERMINALS = 1096


def report(base: str, key: str, broadcast_id: str) -> dict[str, Any]:
    url = f"{base}/api/v1/broadcasts/{broadcast_id}"
    body: dict[str, Any] = httpx.get(url, headers={"X-API-Key": key}, timeout=10).json()
    return body


def until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_sigkill_mid_broadcast_then_restart_completes_every_terminal(
    tmp_path: Path, mosquitto_url: str
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = clean_env(
        mqtt_url=mosquitto_url,
        database_url=f"sqlite:///{tmp_path / 'cx.db'}",
        retry_after_s="1",
        county_region=CITY,
        approval_levels="[]",  # the two-person rule has its own tests; here the alert goes at once
    )
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "deploy.cli",
            "admin",
            "api-key",
            *("--name", "ops", "--region", CITY, "--role", "admin"),
        ],
        env=env,
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        check=True,
    )
    key = made.stdout.strip()
    serve = cunxiang("serve", "--port", str(port), env=env, cwd=str(tmp_path))
    simulate = None
    try:
        wait_for(follow(serve), serve, "Application startup complete", timeout=60)
        simulate = cunxiang(
            "simulate",
            "--region",
            CITY,
            "--per-village",
            "1",
            "--playback",
            "4",
            "--register",
            base,
            "--api-key",
            key,
            env=env,
            cwd=str(tmp_path),
        )
        wait_for(follow(simulate), simulate, "simulated terminals online", timeout=90)
        body = {"kind": "emergency", "level": 1, "regions": [CITY], "text": "溃坝预警", "expires_in": 300}
        accepted = httpx.post(
            f"{base}/api/v1/broadcasts", json=body, headers={"X-API-Key": key}, timeout=30
        ).json()
        assert accepted["terminals"] == TERMINALS
        until(lambda: report(base, key, accepted["id"])["counts"]["playing"] > 300, 30, "terminals playing")

        serve.send_signal(signal.SIGKILL)
        serve.wait(10)
        before = states_in_db(tmp_path / "cx.db", accepted["id"])
        assert sum(before.values()) == TERMINALS
        assert before.get("playing", 0) + before.get("received", 0) > 0
        assert before.get("completed", 0) < TERMINALS

        serve = cunxiang("serve", "--port", str(port), env=env, cwd=str(tmp_path))
        wait_for(follow(serve), serve, "Application startup complete", timeout=60)
        final = until(
            lambda: (r := report(base, key, accepted["id"]))["state"] == "finished" and r,
            60,
            "the broadcast to finish",
        )
        assert final["counts"]["completed"] == TERMINALS
        assert final["unacknowledged"] == [] and final["failures"] == []
    finally:
        for process in (simulate, serve):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGINT)
                process.wait(30)


def states_in_db(path: Path, broadcast_id: str) -> dict[str, int]:
    with sqlite3.connect(path) as db:
        query = "SELECT state, count(*) FROM delivery WHERE broadcast_id = ? GROUP BY state"
        return dict(db.execute(query, (broadcast_id,)).fetchall())
