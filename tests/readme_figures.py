"""The README's tables and its figures' rounding, read alike by the tests that hold the prose
to the results files (test_readme_bench_figures, test_quoted_figures_h257)."""
from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_table(header: str) -> list[list[str]]:
    """The cells of each row of the README's table whose header line starts with `header`
    (its bold marks taken off their ends)."""
    text = README.read_text(encoding="utf-8")
    rows = []
    for line in text[text.index(header):].splitlines()[2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip().strip("*") for c in line.strip("|").split("|")])
    return rows


def agree(written: str, value: float) -> bool:
    """Whether `written` is `value` rounded to the places written."""
    places = len(written.split(".")[1]) if "." in written else 0
    return written == f"{value:.{places}f}"
