"""Workbook 09's checks fail the classic wrong answers, with a hint that names the mistake.

group_rows and mask_tile: wrong answers written here the way a learner gets them wrong. tc_tile_scores: the
solution notebook's kernel with one mistake edited in (the edit must apply, so these tests
follow the solutions). Each case asserts that the check fails (not "not attempted"), that the
printed hint contains the phrase that points at the mistake and, where another hint would be
tempting, that it is not given.
"""
import numpy as np
import pytest

from tests.test_check_mistakes import assert_caught, mutate, run_check, solution_source

NOTEBOOK = "09_tensor_core_decode.ipynb"


def _tiles(rows, group, d, dtype=np.float16, pad=0.0):
    n = -(-group // 16)
    out = np.full((n * 16, d), pad, dtype)
    out[:group] = rows
    return out.reshape(n, 16, d)


def modulo_group(q, j, g):
    return _tiles(q[j::q.shape[0] // g][:g], g, q.shape[1])


def no_offset(q, j, g):
    return _tiles(q[:g], g, q.shape[1])


def padded_by_repeating(q, j, g):
    n = -(-g // 16)
    return np.resize(q[j * g:(j + 1) * g], (n * 16, q.shape[1])).reshape(n, 16, -1)


def padded_with_nan(q, j, g):
    return _tiles(q[j * g:(j + 1) * g], g, q.shape[1], pad=np.nan)


def one_tile_only(q, j, g):
    return _tiles(q[j * g:(j + 1) * g][:16], min(g, 16), q.shape[1])


def not_padded(q, j, g):
    return q[j * g:(j + 1) * g][None]


def float64_tiles(q, j, g):
    return _tiles(q[j * g:(j + 1) * g], g, q.shape[1], dtype=np.float64)


def striped(q, j, g):
    n = -(-g // 16)
    out = np.zeros((n * 16, q.shape[1]), q.dtype)
    for i in range(g):
        out[(i % n) * 16 + i // n] = q[j * g + i]
    return out.reshape(n, 16, -1)


def transposed(q, j, g):
    return np.swapaxes(_tiles(q[j * g:(j + 1) * g], g, q.shape[1]), 1, 2)


GROUP_MISTAKES = [
    ("modulo group", modulo_group, "consecutive query heads", ()),
    ("group starts at head 0", no_offset, "not at head 0", ()),
    ("padding repeats the group", padded_by_repeating, "rows past the group must be zero",
     ("consecutive",)),
    ("padding is NaN", padded_with_nan, "rows past the group must be zero", ("consecutive",)),
    ("one tile for any group", one_tile_only, "needs ceil(", ()),
    ("rows not padded to 16", not_padded, "pad the", ()),
    ("float64 tiles", float64_tiles, "keep q's dtype", ()),
    ("tiles striped", striped, "in order", ()),
    ("tile transposed", transposed, "not [tiles, head_dim, 16]", ()),
]

def _cols(tile):
    return 16 * tile + np.arange(16)


def mask_no_scale(s, tile, n, scale):
    out = s.copy()
    out[:, _cols(tile) >= n] = -np.inf
    return out


def mask_with_zero(s, tile, n, scale):
    out = s * np.float32(scale)
    out[:, _cols(tile) >= n] = 0
    return out


def mask_strict(s, tile, n, scale):
    out = s * np.float32(scale)
    out[:, _cols(tile) > n] = -np.inf
    return out


def mask_without_tile_offset(s, tile, n, scale):
    out = s * np.float32(scale)
    out[:, np.arange(16) >= n] = -np.inf
    return out


def mask_rows(s, tile, n, scale):
    out = s * np.float32(scale)
    out[_cols(tile) >= n, :] = -np.inf
    return out


def mask_in_place(s, tile, n, scale):
    s *= np.float32(scale)
    s[:, _cols(tile) >= n] = -np.inf
    return s


def mask_float64(s, tile, n, scale):
    out = s.astype(np.float64) * scale
    out[:, _cols(tile) >= n] = -np.inf
    return out


def mask_nothing(s, tile, n, scale):
    return s * np.float32(scale)


MASK_MISTAKES = [
    ("no scale", mask_no_scale, "not scaled", ()),
    ("masked with 0", mask_with_zero, "masked with 0", ("not scaled",)),
    ("> instead of >=", mask_strict, ">=, not >", ()),
    ("tile offset forgotten", mask_without_tile_offset, "add the tile's start", ()),
    ("rows masked", mask_rows, "not rows", ()),
    ("s changed in place", mask_in_place, "changed in place", ()),
    ("float64 logits", mask_float64, "keep them float32", ()),
    ("nothing masked", mask_nothing, "must come out -inf", ("not scaled",)),
]

TILE_MISTAKES = [
    ("K read row-major as B", [("__half, wmma::col_major> b", "__half, wmma::row_major> b")],
     "col_major"),
    ("scores stored column-major", [("wmma::mem_row_major", "wmma::mem_col_major")],
     "stored transposed"),
    ("GQA as modulo", [("(kv_head * group + r)", "(kv_head + r * num_kv_heads)")],
     "consecutive heads"),
    ("Q rows not offset by kv head", [("(kv_head * group + r)", "(r)")],
     "every block used the first group"),
    ("K of kv head 0", [("(slot * num_kv_heads + kv_head)", "(slot * num_kv_heads)")],
     "from kv head 0"),
    ("padding rows not zeroed", [("r < group ? q[", "r < 16 ? q[")], "zero the Q rows past"),
    ("tokens past seq_len read", [("if (t < seq_len) {", "{")], "at or past seq_len"),
    ("ldm 16", [("q_tile + k0, head_dim", "q_tile + k0, 16"),
                ("k_tile + k0, head_dim", "k_tile + k0, 16")], "ldm = head_dim"),
    ("ldm 16 for K only", [("k_tile + k0, head_dim", "k_tile + k0, 16")], "K's load"),
    ("lanes leave before the WMMA calls",
     [("    __syncwarp();", "    if (lane >= 16) return;\n    __syncwarp();")],
     "every lane of the warp must call"),
]


@pytest.mark.parametrize("name, impl, phrase, not_phrases", GROUP_MISTAKES,
                         ids=[m[0] for m in GROUP_MISTAKES])
def test_group_rows_mistake_is_caught(name, impl, phrase, not_phrases):
    assert_caught("group_rows", impl, phrase, not_phrases=not_phrases)


@pytest.mark.parametrize("name, impl, phrase, not_phrases", MASK_MISTAKES,
                         ids=[m[0] for m in MASK_MISTAKES])
def test_mask_tile_mistake_is_caught(name, impl, phrase, not_phrases):
    assert_caught("mask_tile", impl, phrase, not_phrases=not_phrases)


@pytest.mark.parametrize("name, edits, phrase", TILE_MISTAKES, ids=[m[0] for m in TILE_MISTAKES])
def test_tile_mistake_is_caught(name, edits, phrase):
    assert_caught("tc_tile_scores", mutate(solution_source(NOTEBOOK, "SOURCE_TILE"), edits),
                  phrase, device="cpu")


def test_tile_check_passes_the_solution_and_reports_the_stub():
    result, printed = run_check("tc_tile_scores", solution_source(NOTEBOOK, "SOURCE_TILE"),
                                device="cpu")
    assert result.passed, printed
    result, printed = run_check("tc_tile_scores",
                                solution_source(NOTEBOOK, "SOURCE_TILE", "exercises"),
                                device="cpu")
    assert result.status == "not attempted" and "Traceback" not in printed


def test_group_rows_check_passes_a_correct_layout_written_differently():
    def by_loop(q, kv_head, group):
        tiles = np.zeros((-(-group // 16), 16, q.shape[1]), q.dtype)
        for i in range(group):
            tiles[i // 16, i % 16] = q[kv_head * group + i]
        return tiles
    result, printed = run_check("group_rows", by_loop)
    assert result.passed, printed


def test_every_task_has_its_mistakes():
    """Six or more wrong answers for each NumPy task, three or more for the kernel."""
    from pagedattn_lab.lessons import lesson
    assert lesson("09").tasks == ["group_rows", "tc_tile_scores", "mask_tile"]
    assert len(GROUP_MISTAKES) >= 6 and len(MASK_MISTAKES) >= 6 and len(TILE_MISTAKES) >= 3


def test_mask_tile_check_passes_a_correct_mask_written_differently():
    def with_where(s, tile, seq_len, scale):
        keep = (16 * tile + np.arange(16))[None, :] < seq_len
        return np.where(keep, s * np.float32(scale), np.float32(-np.inf)).astype(np.float32)
    result, printed = run_check("mask_tile", with_where)
    assert result.passed, printed
