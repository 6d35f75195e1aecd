"""Pages from the Jinja2 templates, with the labels of the reader's language and who is signed in."""

import json
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from jinja2 import StrictUndefined, pass_context
from jinja2.runtime import Context

from api.console.i18n import labels, language_of
from controller.accounts import Principal

_templates = Jinja2Templates(directory=str(resources.files("api.console").joinpath("templates")))
# A label or value missing from a page is an error, not a silently blank space.
_templates.env.undefined = StrictUndefined
# JSON with Chinese as written (Jinja's `tojson` escapes it to \uXXXX); autoescaping still applies.
_templates.env.filters["readable_json"] = lambda value: json.dumps(value, ensure_ascii=False, sort_keys=True)


@pass_context
def _local(context: Context, moment: datetime, format: str = "%Y-%m-%d %H:%M:%S") -> str:
    """A stored (UTC) time as the county reads its clocks (CUNXIANG_TIMEZONE)."""
    zone: ZoneInfo = context["zone"]
    return moment.astimezone(zone).strftime(format)


_templates.env.filters["local"] = _local


def render(
    request: Request, template: str, who: Principal | None = None, status_code: int = 200, **context: Any
) -> HTMLResponse:
    language = language_of(request)
    controller = getattr(request.app.state, "controller", None)
    zone = ZoneInfo(controller.settings.timezone) if controller is not None else UTC
    return _templates.TemplateResponse(
        request,
        template,
        {"t": labels(language), "language": language, "who": who, "page": "", "zone": zone, **context},
        status_code=status_code,
    )
