"""Run a fleet of simulated terminals in one process."""

import asyncio
import logging
import ssl
from dataclasses import dataclass, field

from devices.signing import KeySet
from devices.topics import TopicScheme
from simulator.fleet import Behaviour, SimulatedSpec
from simulator.scenario import Scenario, play
from simulator.terminal import SimulatedTerminal

log = logging.getLogger(__name__)


@dataclass
class Fleet:
    """Simulated terminals and their tasks; an async context manager that stops them all on exit."""

    specs: list[SimulatedSpec]
    host: str
    port: int
    keys: KeySet
    """the controller's public keys the terminals trust"""
    topics: TopicScheme = field(default_factory=TopicScheme)
    behaviour: Behaviour = field(default_factory=Behaviour)
    connect_concurrency: int = 64
    scenario: Scenario | None = None
    """faults to play out once every terminal is online"""
    tls: ssl.SSLContext | None = None
    """for an mqtts:// broker: how the terminals check its certificate (devices/broker.py)"""
    terminals: list[SimulatedTerminal] = field(default_factory=list)
    _tasks: list["asyncio.Task[None]"] = field(default_factory=list)

    async def start(self, timeout: float = 120.0) -> None:
        """Start every terminal, a few at a time, and wait until all are online."""
        self.terminals = [
            SimulatedTerminal(
                spec, self.host, self.port, self.topics, self.behaviour, self.keys, tls=self.tls
            )
            for spec in self.specs
        ]
        gate = asyncio.Semaphore(self.connect_concurrency)

        async def start_one(terminal: SimulatedTerminal) -> None:
            async with gate:
                self._tasks.append(asyncio.create_task(terminal.run()))
                await terminal.connected.wait()

        await asyncio.wait_for(asyncio.gather(*(start_one(t) for t in self.terminals)), timeout)
        scheme = "mqtts" if self.tls else "mqtt"
        log.info(
            "%d simulated terminals online at %s://%s:%d", len(self.terminals), scheme, self.host, self.port
        )
        if self.scenario is not None:
            self._tasks.append(asyncio.create_task(play(self.scenario, self.terminals)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def __aenter__(self) -> "Fleet":
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()
