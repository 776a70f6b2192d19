"""The own-work check knows the package's code by what the import loaded (loaded_code.py),
not by compiling the file again when a check asks: a file edited after the import made the
package's own calls look like the learner's, and every check would fail as "not your own
work"."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pagedattn_lab

PACKAGE_DIR = Path(pagedattn_lab.__file__).parent

_ASK = """
import sys
from pathlib import Path
import pagedattn_lab.paging as paging
from pagedattn_lab.grading.own_watch import package_code
if len(sys.argv) > 1:   # the file edited after the import (a git pull with the kernel running)
    path = Path(paging.__file__)
    assert path.is_relative_to(Path.cwd()), path   # the copy, never the checkout's own file
    path.write_text("# a line added above everything\\n" + path.read_text())
print(package_code(paging.BlockAllocator.allocate.__code__, paging.__dict__))
"""


def _ask(root: Path, edit: bool = False) -> str:
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-c", _ASK, *(["edit"] if edit else [])],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _copy_of_the_package(tmp_path: Path) -> Path:
    shutil.copytree(PACKAGE_DIR, tmp_path / "pagedattn_lab",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    return tmp_path


def test_a_package_file_edited_after_the_import_is_still_the_package(tmp_path):
    root = _copy_of_the_package(tmp_path)
    assert _ask(root) == "True"
    assert _ask(root, edit=True) == "True"


def test_code_compiled_under_a_package_file_name_is_not_the_package():
    """What the recording is for (hunt 94): the learner's code run in a package module's
    namespace, under its file's name."""
    from pagedattn_lab import paging
    from pagedattn_lab.grading.own_watch import package_code
    code = compile("def allocate(self, n):\n    return list(range(n))\n", paging.__file__,
                   "exec")
    inner = next(c for c in code.co_consts if hasattr(c, "co_code"))
    assert not package_code(inner, paging.__dict__)
    assert package_code(paging.BlockAllocator.allocate.__code__, paging.__dict__)
