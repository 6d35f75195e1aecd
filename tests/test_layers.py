"""The terminal's side of the wire stands alone: what a loudspeaker runs (`devices/`, its agent) and
the simulator never import the controller, its API or its deployment code."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CENTRAL = ("controller", "api", "deploy", "bench")


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", ["devices", "simulator"])
def test_the_terminal_side_imports_nothing_of_the_controller(package: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imports(path) & set(CENTRAL))
        for path in (ROOT / package).rglob("*.py")
        if _imports(path) & set(CENTRAL)
    }
    assert offenders == {}
