"""Helpers for tests that run `cunxiang` commands as real processes."""

import os
import subprocess
import sys
import threading
import time


def follow(process: subprocess.Popen[str]) -> list[str]:
    """The process's output lines, collected on a thread so a silent process cannot hang the test."""
    lines: list[str] = []
    stream = process.stdout
    assert stream is not None

    def pump() -> None:
        for line in iter(stream.readline, ""):
            lines.append(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def wait_for(lines: list[str], process: subprocess.Popen[str], marker: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while not any(marker in line for line in list(lines)):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"no {marker!r} from {process.args!r} (exit {process.poll()}):\n" + "".join(lines)
            )
        time.sleep(0.1)
    return "".join(lines)


def cunxiang(*args: str, env: dict[str, str], cwd: str) -> subprocess.Popen[str]:
    """`cunxiang ARGS` as its own process, output merged and readable with `follow`."""
    return subprocess.Popen(
        [sys.executable, "-m", "deploy.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def clean_env(**settings: str) -> dict[str, str]:
    """This environment without any CUNXIANG_ setting, plus `settings` (names without the prefix)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUNXIANG_")}
    env.update({f"CUNXIANG_{name.upper()}": value for name, value in settings.items()})
    return env
