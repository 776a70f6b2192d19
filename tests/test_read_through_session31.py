"""Read-through of session 31's diff (git diff a146555): what the three readers found, each
pinned here."""
from pathlib import Path

import numpy as np
import pytest

from pagedattn_lab.grade import find_notebooks
from tests.test_mutants_hunt133 import _group_rows_times


def _touch(path: Path, text: str = "{}") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_hidden_and_mac_zip_notebooks_are_no_submissions(tmp_path):
    """Before: `__MACOSX/._01_page_table.ipynb` (every Mac zip carries one), an editor's
    `.~lock` notebook and one under `.git` were graded as submissions of their own."""
    _touch(tmp_path / "01_page_table.ipynb")
    for junk in ("__MACOSX/._01_page_table.ipynb", ".~lock.ipynb", ".git/x.ipynb",
                 ".ipynb_checkpoints/01_page_table-checkpoint.ipynb", "__MACOSX/notes.txt"):
        _touch(tmp_path / junk)
    others = []
    assert [name for _, name in find_notebooks([tmp_path], others)] == ["01_page_table.ipynb"]
    assert others == []


def test_a_file_named_twice_is_graded_once(tmp_path):
    """Before: `grade a.ipynb a.ipynb` graded it twice, and the gradebook, which counts a
    submission's rows by its name, summed both into one line of doubled tasks."""
    nb = _touch(tmp_path / "a" / "00_why_paging.ipynb")
    assert len(find_notebooks([nb, nb])) == 1
    assert len(find_notebooks([tmp_path / "a", nb])) == 1


@pytest.mark.parametrize("factor", [1.003, 1.008])
def test_rows_off_by_rounding_are_not_told_a_pre_scale(factor):
    """Before: rows 0.3% off (not a scale anyone applies: 1/sqrt(head_dim) is far from 1) got
    "the rows are the right heads times 1.003: copy q's rows as they are"."""
    from tests.check_helpers import assert_caught
    assert_caught("group_rows", _group_rows_times(factor), "row r of tile t is query head",
                  not_phrases=("the right heads times",))


def test_a_real_pre_scale_is_still_named():
    from tests.check_helpers import assert_caught
    assert_caught("group_rows", _group_rows_times(np.float32(0.125)), "the right heads times")


def test_an_e4m3_cache_tensor_of_an_uncompressed_call_is_told_the_codes_view():
    """Before: a torch.float8_e4m3fn cache where no compressed plan was made got "which NumPy
    and CuPy cannot share" and no fix; q, which never holds codes, gets no view hint."""
    torch = pytest.importorskip("torch")
    from pagedattn_lab.attention_common import from_torch
    pages = torch.zeros((2, 4, 1, 16), dtype=torch.float8_e4m3fn)
    with pytest.raises(TypeError, match=r"pass k_cache\.view\(torch\.uint8\) with kv_dtype='fp8_e4m3'"):
        from_torch(pages, "k_cache")
    with pytest.raises(TypeError) as info:
        from_torch(pages, "q")
    assert "view" not in str(info.value)
