"""Flower stays at the edges, and the aggregation maths imports only torch and the stdlib."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLWR_ALLOWED = ("server/", "client/", "simulations/", "fedlora/strategies/", "fedlora/lora/codec.py",
                "fedlora/config/run_config.py")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


SOURCES = sorted(p for d in ("fedlora", "server", "client", "simulations") for p in (ROOT / d).rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_flwr_only_at_the_edges(path: Path):
    rel = str(path.relative_to(ROOT))
    if "flwr" in _imports(path):
        assert rel.startswith(FLWR_ALLOWED), f"{rel} imports flwr"


MATHS = ("keys.py", "factored.py", "init.py")


@pytest.mark.parametrize("path", sorted((ROOT / "fedlora" / "aggregation").glob("*.py"))
                         + sorted(p for p in (ROOT / "fedlora" / "lora").glob("*.py") if p.name in MATHS),
                         ids=lambda p: p.name)
def test_maths_imports_only_torch_and_stdlib(path: Path):
    import sys

    third_party = {n for n in _imports(path)
                   if n not in sys.stdlib_module_names and n not in ("fedlora", "__future__")}
    assert third_party <= {"torch"}, f"{path.name} imports {third_party}"


def test_modules_stay_small():
    too_big = {str(p.relative_to(ROOT)): n for p in SOURCES if (n := len(p.read_text().splitlines())) > 320}
    assert not too_big, too_big
