"""Pages from the Jinja2 templates, with the labels of the reader's language and who is signed in."""

import json
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
# JSON with Chinese as written (Jinja's `tojson` escapes it to \uXXXX); autoescaping still applies.
_templates.env.filters["readable_json"] = lambda value: json.dumps(value, ensure_ascii=False, sort_keys=True)


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
