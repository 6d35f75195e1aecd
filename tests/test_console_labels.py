"""Every label of the console exists in every language, and every label a template uses exists."""

import re
from importlib import resources

from api.console.fleet import PRESENCES
from api.console.i18n import LANGUAGES, all_labels
from controller.alarms import Fault
from controller.presence import Why
from controller.terminals import TERMINAL_KINDS


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
    for file in resources.files("api.console").joinpath("static").iterdir():
        if file.name.endswith(".js"):
            used |= set(re.findall(r"\bT\.([a-z_0-9]+)", file.read_text(encoding="utf-8")))
    assert used and used <= set(all_labels()["zh"]), used - set(all_labels()["zh"])


def test_every_label_a_page_builds_from_a_value_exists() -> None:
    """Pages name some labels by value (`t['alarm_' ~ kind]`): every value has its label."""
    labels = set(all_labels()["zh"])
    built = (
        {f"alarm_{fault.value}" for fault in Fault}
        | {f"why_{why}" for name, why in vars(Why).items() if not name.startswith("_")}
        | {f"tkind_{kind}" for kind in TERMINAL_KINDS}
        | {f"presence_{presence}" for presence in PRESENCES}
    )
    assert built <= labels, built - labels
