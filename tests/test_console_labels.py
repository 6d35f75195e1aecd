"""Every label of the console exists in every language, and every label a template uses exists."""

import re
from importlib import resources

from api.console.i18n import LANGUAGES, all_labels


def test_every_language_has_every_label() -> None:
    tables = all_labels()
    assert set(tables) == set(LANGUAGES)
    keys = {language: set(table) for language, table in tables.items()}
    assert keys["zh"] == keys["en"], keys["zh"] ^ keys["en"]
    assert all(value.strip() for table in tables.values() for value in table.values())


def test_every_label_the_pages_name_exists() -> None:
    used: set[str] = set()
    for file in resources.files("api.console").joinpath("templates").iterdir():
        used |= set(re.findall(r"\bt\.([a-z_0-9]+)", file.read_text(encoding="utf-8")))
    script = resources.files("api.console").joinpath("static", "console.js").read_text(encoding="utf-8")
    used |= set(re.findall(r"\bT\.([a-z_0-9]+)", script))
    assert used and used <= set(all_labels()["zh"]), used - set(all_labels()["zh"])
