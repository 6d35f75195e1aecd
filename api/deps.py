"""Dependencies, so route signatures read like sentences: `session: SessionDep`."""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlmodel import Session

from controller.service import Controller


def get_controller(request: Request) -> Controller:
    controller: Controller = request.app.state.controller
    return controller


ControllerDep = Annotated[Controller, Depends(get_controller)]


def get_session(controller: ControllerDep) -> Iterator[Session]:
    with Session(controller.engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
