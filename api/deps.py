"""Dependencies, so route signatures read like sentences: `session: SessionDep`."""

import asyncio
from collections.abc import Callable, Iterator
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from sqlmodel import Session

from controller.service import Controller

T = TypeVar("T")


def get_controller(request: Request) -> Controller:
    controller: Controller = request.app.state.controller
    return controller


ControllerDep = Annotated[Controller, Depends(get_controller)]


def get_session(controller: ControllerDep) -> Iterator[Session]:
    with Session(controller.engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


async def read(controller: Controller, work: Callable[[Session], T]) -> T:
    """Run a read on its own session in a worker thread, off the event loop."""

    def run() -> T:
        with Session(controller.engine) as session:
            return work(session)

    return await asyncio.to_thread(run)
