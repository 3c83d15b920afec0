"""app.py is wiring: the page is composed from one module per part (webapp/ui), each function short
enough to read at once."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 80
PARTS = ("model_bar", "generate", "explore", "train", "about")


def functions(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.lineno, node.end_lineno - node.lineno + 1


def test_no_function_in_the_app_or_its_parts_is_longer_than_80_lines():
    files = [ROOT / "app.py", *sorted((ROOT / "webapp" / "ui").glob("*.py"))]
    lengths = [(n, f"{p.relative_to(ROOT)}:{line} {name}") for p in files for name, line, n in functions(p)]
    assert len(lengths) > 20, "the app's functions were found"
    too_long = sorted(x for x in lengths if x[0] > MAX_LINES)
    assert not too_long, f"functions over {MAX_LINES} lines: {too_long}"


def test_every_part_of_the_page_has_its_module():
    for part in PARTS:
        names = {name for name, _, _ in functions(ROOT / "webapp" / "ui" / f"{part}.py")}
        assert "build" in names, f"webapp/ui/{part}.py builds its part"


def test_app_composes_the_parts_in_a_short_build():
    lengths = {name: n for name, _, n in functions(ROOT / "app.py")}
    assert lengths["build"] <= 40, f"build() composes the parts: {lengths['build']} lines"
    assert len((ROOT / "app.py").read_text(encoding="utf-8").splitlines()) <= 200, "app.py is wiring only"
