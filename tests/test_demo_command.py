"""`cunxiang demo` works as the README says, even when ports 1883 and 8000 are taken."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from controller.embedded_broker import free_port
from tests.processes import follow, wait_for


def occupied_port() -> socket.socket:
    holder = socket.socket()
    holder.bind(("127.0.0.1", free_port()))
    holder.listen()
    return holder


def test_demo_picks_free_ports_and_an_alert_reaches_the_simulated_terminals(tmp_path: Path) -> None:
    with occupied_port() as http_holder, occupied_port() as mqtt_holder:
        http_port, mqtt_port = http_holder.getsockname()[1], mqtt_holder.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CUNXIANG_")}
        env["CUNXIANG_EMBEDDED_BROKER_PORT"] = str(mqtt_port)
        demo = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "deploy.cli",
                "demo",
                "--port",
                str(http_port),
                "--region",
                "421202100",
                "--playback",
                "0.5",
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            lines = follow(demo)
            output = wait_for(lines, demo, "Press Ctrl-C", timeout=90)
            assert f"port {mqtt_port} is taken" in output
            assert f"port {http_port} is taken" in output
            base = re.search(r"API docs\s+(http://\S+)/docs", output).group(1)  # type: ignore[union-attr]
            sign_in = re.search(r"Sign in\s+username (\S+)\s+password (\S+)", output)
            assert sign_in is not None, output
            assert httpx.get(f"{base}/api/v1/terminals").status_code == 401
            token = httpx.post(
                f"{base}/api/v1/auth/token",
                data={"username": sign_in.group(1), "password": sign_in.group(2)},
                timeout=30,
            ).json()["access_token"]
            auth = {"Authorization": f"Bearer {token}"}
            curl = re.search(r"-d '(\{.*\})'", output).group(1)  # type: ignore[union-attr]
            accepted = httpx.post(
                f"{base}/api/v1/broadcasts",
                content=curl,
                headers={"content-type": "application/json"} | auth,
                timeout=30,
            ).json()
            assert accepted["terminals"] > 10 and accepted["status"] == "exercise"
            deadline = time.monotonic() + 60
            while (report := httpx.get(f"{base}/api/v1/broadcasts/{accepted['id']}", headers=auth).json())[
                "state"
            ] != "finished":
                assert time.monotonic() < deadline, report
                time.sleep(0.2)
            assert report["counts"]["completed"] == accepted["terminals"]
        finally:
            demo.send_signal(signal.SIGINT)
            demo.wait(timeout=60)
    assert demo.returncode == 0
    wait_for(lines, demo, "Application shutdown complete", timeout=5)
    assert "Traceback" not in "".join(lines)
    assert (tmp_path / "cunxiang.db").exists()


def test_serve_with_the_embedded_broker_port_taken_says_so_and_exits_1(tmp_path: Path) -> None:
    with occupied_port() as holder:
        taken = holder.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CUNXIANG_")}
        env["CUNXIANG_EMBEDDED_BROKER_PORT"] = str(taken)
        result = subprocess.run(
            [sys.executable, "-m", "deploy.cli", "serve", "--port", str(free_port())],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"port {taken} is in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_simulate_registers_its_terminals_and_they_come_online(tmp_path: Path) -> None:
    """`cunxiang simulate --register` against a running `cunxiang serve`, two processes over real TCP."""
    api_port, broker_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUNXIANG_")}
    env["CUNXIANG_EMBEDDED_BROKER_PORT"] = str(broker_port)
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "deploy.cli",
            "admin",
            "api-key",
            *("--name", "sim", "--region", "421202", "--role", "admin"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    key = made.stdout.strip()
    auth = {"X-API-Key": key}
    serve = subprocess.Popen(
        [sys.executable, "-m", "deploy.cli", "serve", "--port", str(api_port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    simulate = None
    try:
        wait_for(follow(serve), serve, "Application startup complete", timeout=60)
        base = f"http://127.0.0.1:{api_port}"
        simulate = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "deploy.cli",
                "simulate",
                "--broker",
                f"mqtt://127.0.0.1:{broker_port}",
                "--region",
                "421202100",
                "--per-village",
                "2",
                "--register",
                base,
                "--api-key",
                key,
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        wait_for(follow(simulate), simulate, "simulated terminals online", timeout=60)
        deadline = time.monotonic() + 30
        while True:
            page = httpx.get(f"{base}/api/v1/terminals", params={"region": "421202100"}, headers=auth).json()
            if page["total"] > 0 and all(t["presence"] == "online" for t in page["items"]):
                break
            assert time.monotonic() < deadline, page
            time.sleep(0.2)
        assert page["total"] % 2 == 0 and page["total"] >= 20
        simulate.send_signal(signal.SIGINT)
        assert simulate.wait(timeout=30) == 0
        deadline = time.monotonic() + 30
        terminals = f"{base}/api/v1/terminals"
        while {t["presence"] for t in httpx.get(terminals, headers=auth).json()["items"]} != {"offline"}:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        for process in (simulate, serve):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGINT)
                process.wait(timeout=30)
