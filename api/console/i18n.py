"""The console's labels in Chinese (the default) and English, from one file (`labels.toml`)."""

import tomllib
from functools import cache
from importlib import resources

from fastapi import Request

LANGUAGES = ("zh", "en")
LANGUAGE_COOKIE = "cx_lang"


@cache
def all_labels() -> dict[str, dict[str, str]]:
    text = resources.files("api.console").joinpath("labels.toml").read_text(encoding="utf-8")
    return {language: dict(table) for language, table in tomllib.loads(text).items()}


def labels(language: str) -> dict[str, str]:
    return all_labels()[language if language in LANGUAGES else LANGUAGES[0]]


def language_of(request: Request) -> str:
    chosen = request.cookies.get(LANGUAGE_COOKIE)
    return chosen if chosen in LANGUAGES else LANGUAGES[0]
