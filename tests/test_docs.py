"""Every ```python block of README.md and docs/*.md runs (each file's blocks in order, one namespace), and the
documentation site builds with ``mkdocs build --strict`` (what ``make docs`` runs; CI runs it through this test)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run(path):
    blocks = BLOCK.findall(path.read_text())
    namespace: dict = {"__name__": "__docs__"}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"{path.name}[block {i}]", "exec"), namespace)
        except Exception as err:  # pragma: no cover - the message is the point
            raise AssertionError(f"{path.name} block {i} failed: {err!r}\n{code}") from err


def test_readme_has_runnable_example():
    assert BLOCK.findall((ROOT / "README.md").read_text()), "README needs a ```python example"


def test_docs_site_builds_strict(tmp_path):
    """mkdocs-material + the mkdocstrings API reference: a broken link or anchor, a page missing from the nav or a
    docstring griffe cannot parse is a warning, and ``strict: true`` makes it an error."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pages = sorted(p.stem for p in (ROOT / "docs").glob("*.md"))
    for page in pages:
        html = site / ("index.html" if page == "index" else f"{page}/index.html")
        assert html.exists(), f"docs/{page}.md was not built"
    # docstrings are Markdown (Google style as mkdocstrings renders it): a Sphinx role or a reST literal-block
    # marker would be printed as it is
    raw = re.compile(r":(?:py:)?(?:func|meth|class|data|mod|attr|exc|obj):|[^:\s]::</p>")
    for html in site.rglob("*.html"):
        found = raw.search(html.read_text())
        assert found is None, f"{html.relative_to(site)}: raw reST markup {found.group(0)!r} in the built site"
    reference = (site / "reference-bilevel" / "index.html").read_text()
    assert 'id="bilevel.SameState"' in reference and 'id="bilevel.BilevelUpdate"' in reference
    assert 'id="recipes.launch.run_trials"' in (site / "reference-recipes" / "index.html").read_text()


#: What belongs in docs/results.md and closing notes, not in library code: CPU names, dates, issue numbers, timings.
HISTORY = re.compile(
    r"\b(?:Xeon|EPYC|AMX|AVX2|AVX512\w*)\b|\b20\d\d-\d\d-\d\d\b|\bissue \d+|closing note|"
    r"\b\d+(?:\.\d+)?\s?ms\b|\b\d+\.\d+ s per\b|GFLOP/s|frames/s",
    re.I,
)


#: The packages whose code must read as a product.
LIBRARY = ("bilevel", "worldmodels", "tasklosses", "recipes")


def test_library_code_carries_no_measurement_history():
    """Library code and the README say what and why; measurements live in docs/results.md and performance.md."""
    found = [
        f"{path.relative_to(ROOT)}:{i}: {line.strip()}"
        for path in [ROOT / "README.md", *[p for d in LIBRARY for p in sorted((ROOT / d).rglob("*.py"))]]
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if HISTORY.search(line)
    ]
    assert not found, "measurements belong in docs/results.md or docs/performance.md:\n" + "\n".join(found)
