"""The dependency direction is recipes → worldmodels, tasklosses → bilevel; bilevel imports none of them."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "bilevel": {"worldmodels", "tasklosses", "recipes"},
    "worldmodels": {"recipes"},
    "tasklosses": {"recipes"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_dependencies_flow_one_way():
    for package, forbidden in FORBIDDEN.items():
        for path in (ROOT / package).rglob("*.py"):
            bad = _imports(path) & forbidden
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


#: Functions that are declarative tables (data, one entry a line) and so may run longer than ``MAX_FUNCTION_LINES``.
TABLES = {("recipes/cli.py", "build_parser")}
MAX_FUNCTION_LINES = 80


def test_no_function_is_longer_than_80_lines():
    long = []
    for package in ("bilevel", "worldmodels", "tasklosses", "recipes"):
        for path in (ROOT / package).rglob("*.py"):
            rel = str(path.relative_to(ROOT))
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and (rel, node.name) not in TABLES:
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        long.append(f"{rel}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "functions over 80 lines: " + ", ".join(long)


def test_the_dreamer_recipes_hold_the_reference_step_alone():
    """TEMPO and DreamerV2 read top to bottom: their speed-ups live in recipes/dreamer/fast.py, their after-run
    analysis in recipes/dreamer/analysis.py."""
    for name in ("tempo.py", "dreamerv2.py"):
        source = (ROOT / "recipes" / "dreamer" / name).read_text()
        assert len(source.splitlines()) <= 350, name
        assert "MaybeCompiled" not in source and "torch.func" not in source, name
