"""Wrong answers of workbooks 05, 07, 08 and 11 that hunts h281 and h282 left with only a
general hint, each the solution with one learner's mistake:

1. quantize_write: the static scale divided by 127 again (k_scale[head] / 127), and the k row
   read at token * head_dim in static mode (both head terms left out), got the spec.
2. tiled_kernel: the tile's load at slot page * page_size + i % page_size (i the element's
   index in the tile, not the key's) got "the race check found no race".
3. decode_step: appending k[seq_id:seq_id+1] was named in its first failing cases, but the
   fork case ("with one page free") got "append, then attend" only.
4. decode_floor_ms: bandwidth_gbs * 1e6 (MB/s) gives seconds * 1e6 for every input, and was
   told "microseconds" only: both mistakes fit, so both are named.
"""
import pytest

from tests.check_helpers import (_flat, assert_caught, mutate, run_check, solution_of,
                                 solution_source)

_KERNELS = {"tiled_kernel": ("05_tiled_kernel.ipynb", "SOURCE_TILED"),
            "quantize_write": ("11_kv_compression.ipynb", "SOURCE_WRITE")}
_SPEC_WRITE = "code = rintf(x / scale) clamped to [-127, 127]"
_STATIC = "} else {\n        scale = k_scale[head];"
_APPEND = "self.cache.append(seq_id, k[i:i + 1], v[i:i + 1])"

# (task, id, edits, phrase a failed case's message or hint holds, phrases no hint holds)
KERNEL_MISTAKES = [
    ("quantize_write", "static scale / 127 again",
     [(_STATIC, "} else {\n        scale = k_scale[head] / 127.0f;")],
     "not by k_scale[head] / 127 again", (_SPEC_WRITE,)),
    ("quantize_write", "static row at token * head_dim",
     [(_STATIC, "} else {\n        row = k + (long long)token * head_dim;\n"
                "        scale = k_scale[head];")],
     "every head read k + token * head_dim", (_SPEC_WRITE, "every head read head 0's row")),
    ("quantize_write", "row at token * head_dim in both modes",
     [("k + ((long long)token * num_kv_heads + head) * head_dim", "k + (long long)token * "
                                                                   "head_dim")],
     "every head read k + token * head_dim", (_SPEC_WRITE, "every head read head 0's row")),
    ("tiled_kernel", "tile key i % page_size",
     [("page_size + i / head_dim", "page_size + i % page_size")],
     "the tile's key was taken as i % page_size", ("the race check found no race",)),
]


@pytest.mark.parametrize("task, edits, phrase, not_phrases",
                         [m[:1] + m[2:] for m in KERNEL_MISTAKES],
                         ids=[f"{m[0]}-{m[1]}" for m in KERNEL_MISTAKES])
def test_kernel_mistake_is_named(task, edits, phrase, not_phrases):
    source = mutate(solution_source(*_KERNELS[task]), edits)
    assert_caught(task, source, phrase, not_phrases=not_phrases, device="cpu")


def test_the_fork_case_names_the_row_of_the_seq_id():
    """The fork case's step is seq_ids [1, 3]: sequence 1 got row 1 of k, which the cache
    shows as in the earlier cases."""
    impl = solution_of("07", "MyManager", [(_APPEND, _APPEND.replace("i:i + 1",
                                                                   "seq_id:seq_id + 1"))])
    result, printed = run_check("decode_step", impl)
    fork = next(c for c in result.cases if "fork" in c.name)
    assert not fork.passed and "one page free" in fork.message, printed
    assert "got row 1 of k as its new token" in _flat(fork.hint), printed
    assert "append (the cache copies" not in _flat(fork.hint), printed


@pytest.mark.parametrize("old, new", [("bandwidth_gbs * 1e9", "bandwidth_gbs * 1e6"),
                                      (") * 1e3", ") * 1e6")], ids=["MB/s", "microseconds"])
def test_mb_per_s_and_microseconds_are_both_named(old, new):
    """Either edit gives seconds * 1e6 for every input: the hint names both."""
    impl = solution_of("08", "decode_floor_ms", [(old, new)])
    result, _ = assert_caught("decode_floor_ms", impl, "that is microseconds")
    hint = _flat(next(c for c in result.cases if not c.passed).hint)
    assert "not * 1e6 (that is mb/s)" in hint and "that is microseconds" in hint


@pytest.mark.parametrize("task", sorted(_KERNELS))
def test_the_kernel_solution_still_passes(task):
    result, printed = run_check(task, solution_source(*_KERNELS[task]), device="cpu")
    assert result.passed, printed


@pytest.mark.parametrize("task, workbook, name", [("decode_step", "07", "MyManager"),
                                                  ("decode_floor_ms", "08", "decode_floor_ms")])
def test_the_solution_still_passes(task, workbook, name):
    result, printed = run_check(task, solution_of(workbook, name))
    assert result.passed, printed
