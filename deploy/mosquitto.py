"""Finding and running Mosquitto (Debian puts the broker in /usr/sbin, outside most users' PATH)."""

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

MOSQUITTO_PLACES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def mosquitto_binary() -> str | None:
    """The path of the `mosquitto` broker, or None when it is not installed."""
    return shutil.which("mosquitto") or next((p for p in MOSQUITTO_PLACES if os.access(p, os.X_OK)), None)


class MosquittoError(RuntimeError):
    """Mosquitto is missing or did not start; the message carries its log."""


def run_mosquitto(config: str, workdir: Path, port: int, timeout: float = 10.0) -> subprocess.Popen[bytes]:
    """Start Mosquitto with `config` (which must listen on 127.0.0.1:`port`) and wait until it listens."""
    binary = mosquitto_binary()
    if binary is None:
        raise MosquittoError("mosquitto is not installed (apt-get install mosquitto)")
    conf, log = workdir / "mosquitto.conf", workdir / "mosquitto.log"
    conf.write_text(config, encoding="utf-8")
    with log.open("wb") as log_file:
        process = subprocess.Popen([binary, "-c", str(conf)], stdout=log_file, stderr=log_file)
    deadline = time.monotonic() + timeout
    while not _listening(port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise MosquittoError(
                f"mosquitto did not start on port {port}:\n{log.read_text(errors='replace')[-2000:]}"
            )
        time.sleep(0.05)
    return process


def stop_process(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0
