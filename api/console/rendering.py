"""Pages from the Jinja2 templates, with the labels of the reader's language and who is signed in."""

from importlib import resources
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from jinja2 import StrictUndefined

from api.console.i18n import labels, language_of
from controller.accounts import Principal

_templates = Jinja2Templates(directory=str(resources.files("api.console").joinpath("templates")))
# A label or value missing from a page is an error, not a silently blank space.
_templates.env.undefined = StrictUndefined


def render(
    request: Request, template: str, who: Principal | None = None, status_code: int = 200, **context: Any
) -> HTMLResponse:
    language = language_of(request)
    return _templates.TemplateResponse(
        request,
        template,
        {"t": labels(language), "language": language, "who": who, "page": "", **context},
        status_code=status_code,
    )
