"""The lessons' and workbooks' code, read without running it: every `pl.<module>.` a notebook
uses exists after the notebook's own imports alone (on a GPU machine no CPU launch imports
`pagedattn_lab.cpu` on the side, as one does here), and the lessons import the package's timers
and array-module picks instead of writing their own."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for folder in ("notebooks", "exercises", "solutions")
                   for p in (ROOT / folder).glob("*.ipynb"))
PACKAGE_IMPORT = re.compile(r"^\s*(import pagedattn_lab(?:\.\w+)*(?: as \w+)?|"
                            r"from pagedattn_lab(?:\.\w+)* import [\w, ]+)\s*(?:#.*)?$", re.M)
SUBMODULE_USE = re.compile(r"\bpl\.(\w+)\.")
HAND_ROLLED = {r"time\.perf_counter\(|time\.time\(": "a timer (bench.timing.call_ms or Timer)",
               r"cuda\.Event\(": "CUDA events (bench.timing.Timer)",
               r"__import__\(\s*[\"']cupy|^\s*import cupy": "an array-module pick "
               "(backend.array_module, device_module or cupy_module)"}


def code_of(path: Path) -> str:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_submodule_a_notebook_uses_is_there_after_its_own_imports(path):
    code = code_of(path)
    used = sorted(set(SUBMODULE_USE.findall(code)))
    if not used:
        pytest.skip("uses no pl.<module>.")
    imports = "\n".join(m.group(1) for m in PACKAGE_IMPORT.finditer(code))
    probe = (f"{imports}\nimport pagedattn_lab as pl\n"
             f"print(' '.join(n for n in {used!r} if not hasattr(pl, n)))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    missing = result.stdout.split()
    assert not missing, (f"{path.name} uses pl.{missing[0]}. but never imports "
                         f"pagedattn_lab.{missing[0]}: it exists only once something else "
                         f"imported it (on the CPU a kernel launch does; on a GPU nothing does)")


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_lessons_use_the_packages_timers_and_array_module_picks(path):
    code = code_of(path)
    for pattern, what in HAND_ROLLED.items():
        found = re.search(pattern, code, re.M)
        assert found is None, (f"{path.name} writes its own {what.split(' (')[0]}: "
                               f"{code[found.start():code.find(chr(10), found.start())]!r}; "
                               f"use the package's: {what}")
