"""An MQTT broker inside the controller's process, for a machine with none configured.

It is amqtt (pure Python, MQTT 3.1.1), run on its own thread and event loop so that its work and
the controller's do not queue behind each other. For production, configure Mosquitto or EMQX with
`CUNXIANG_MQTT_URL`; see deploy/mosquitto.conf.
"""

import asyncio
import logging
import socket
import threading
from concurrent.futures import Future
from typing import Any

log = logging.getLogger(__name__)


class BrokerStartError(RuntimeError):
    """The embedded broker could not listen."""


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class EmbeddedBroker:
    """amqtt on a background thread. `start` returns once it listens; `port` says where."""

    def __init__(self, host: str = "127.0.0.1", port: int = 1883) -> None:
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        """Listen on `port`; port 0 means any free port (retried if another process takes it first)."""
        any_port = self.port == 0
        for attempt in range(3 if any_port else 1):
            if any_port:
                self.port = free_port(self.host)
            try:
                self._start(timeout)
                return
            except BrokerStartError:
                if attempt == 2 or not any_port:
                    raise

    def _start(self, timeout: float) -> None:
        if not port_is_free(self.host, self.port):
            raise BrokerStartError(f"port {self.port} on {self.host} is already in use")
        started: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._serve, args=(started,), name="cunxiang-broker", daemon=True
        )
        self._thread.start()
        try:
            started.result(timeout)
        except Exception as exc:
            raise BrokerStartError(
                f"embedded broker did not start on {self.host}:{self.port}: {exc}"
            ) from exc
        log.info("embedded MQTT broker (amqtt) listening on %s", self.url)

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is None or self._stopped is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(timeout)
        self._loop = None

    def _serve(self, started: "Future[None]") -> None:
        asyncio.run(self._main(started))

    async def _main(self, started: "Future[None]") -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        config: dict[str, Any] = {
            "listeners": {
                "default": {"type": "tcp", "bind": f"{self.host}:{self.port}", "max_connections": -1}
            },
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        # Imported here: a controller on Mosquitto never loads amqtt.
        from controller.amqtt_broker import PatchedBroker

        broker = PatchedBroker(config)
        try:
            await broker.start()
        except Exception as exc:
            started.set_exception(exc)
            return
        started.set_result(None)
        await self._stopped.wait()
        broker.abort_connections()
        try:
            await asyncio.wait_for(broker.shutdown(), 5)
        except Exception:
            log.exception("embedded broker did not shut down cleanly")
