"""Administrative divisions: the bundled 咸宁市 data and loading a CSV of that shape."""

from pathlib import Path

import pytest
from sqlalchemy import func
from sqlmodel import Session, select

from controller.db import init_schema, make_engine
from controller.models import Region
from controller.regions import (
    DivisionsError,
    bundled_divisions,
    ensure_bundled_regions,
    load_divisions_file,
    parse_divisions,
    villages_under,
)
from controller.settings import load_settings
from deploy.serve import load_regions


def test_bundled_divisions_hold_xianning_city_counties_townships_villages() -> None:
    regions = parse_divisions(bundled_divisions())
    levels = [r.level for r in regions]
    assert (
        levels.count("city"),
        levels.count("county"),
        levels.count("township"),
        levels.count("village"),
    ) == (1, 6, 89, 1096)
    assert {r.code: r.name for r in regions}["421202"] == "咸安区"


def test_bundled_regions_load_once_into_an_empty_database(database_url: str) -> None:
    engine = make_engine(database_url)
    init_schema(engine)
    with Session(engine) as session:
        assert ensure_bundled_regions(session) == 1192
        assert ensure_bundled_regions(session) == 0
        assert session.exec(select(func.count()).select_from(Region)).one() == 1192
        assert len(villages_under(session, "421202")) == 197
    engine.dispose()


@pytest.mark.parametrize(
    ("csv_text", "message"),
    [
        ("code,name\n42,湖北省\n", "expected header"),
        ("code,name,level,parent_code\n4212x,咸宁市,city,42\n", "line 2"),
        ("code,name,level,parent_code\n4212,咸宁市,county,42\n", "does not match code"),
        ("code,name,level,parent_code\n421202,咸安区,county,4213\n", "does not lie within parent"),
        ("code,name,level,parent_code\n421202,,county,4212\n", "has no name"),
    ],
)
def test_malformed_divisions_csv_is_refused_naming_the_line(csv_text: str, message: str) -> None:
    with pytest.raises(DivisionsError, match=message):
        parse_divisions(csv_text)


def test_loading_a_csv_adds_and_renames_regions(tmp_path: Path, sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    init_schema(engine)
    csv_file = tmp_path / "extra.csv"
    csv_file.write_text("code,name,level,parent_code\n4213,随州市,city,42\n421303,曾都区,county,4213\n")
    with Session(engine) as session:
        assert load_divisions_file(session, csv_file) == 2
        csv_file.write_text("code,name,level,parent_code\n4213,随州,city,42\n421303,曾都区,county,4213\n")
        assert load_divisions_file(session, csv_file) == 1
        assert session.get(Region, "4213").name == "随州"  # type: ignore[union-attr]
    engine.dispose()


def test_regions_load_command_reports_what_it_wrote(
    tmp_path: Path, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    csv_file = tmp_path / "extra.csv"
    csv_file.write_text("code,name,level,parent_code\n4213,随州市,city,42\n")
    assert load_regions(load_settings(database_url=sqlite_url), csv_file) == 0
    assert "1 regions added or changed" in capsys.readouterr().out
    csv_file.write_text("code,name,level,parent_code\n4213x,随州市,city,42\n")
    assert load_regions(load_settings(database_url=sqlite_url), csv_file) == 1
