"""A graded kernel's parameters as its stub names them.

The launch passes arguments by position, so a learner may rename the stub's parameters
(`k_cache` -> `kc`) and the kernel still works. The hints and the access counts that go by a
parameter's name take the stub's name at the same position: `stub_arrays` and
`by_stub_names` for the counts (filed so where they are made, kernel_runner.Kernel.count),
`name_as_stub` (set where a launch fails) and `stub_buffer` for a fault. Messages that quote the learner's code keep the learner's names.
"""
from __future__ import annotations

from ..puzzles import PUZZLES
from ..signature import parse_kernel_signature

# Each graded kernel's stub parameters in order, arrays marked `*`, as the exercise
# notebooks declare them (tests/test_renamed_params_h239.py holds them to the workbooks).
_STUBS = {
    "gather_kv": "*k_cache *v_cache *block_tables *seq_lens *k_out *v_out max_len max_pages "
                 "page_size num_kv_heads head_dim",
    "prefill_naive": "*q *k_cache *v_cache *block_tables *seq_lens *out max_len num_heads "
                     "num_kv_heads head_dim page_size max_pages scale",
    "decode_partition": "*q *k_cache *v_cache *block_tables *seq_lens *part_out *part_ml "
                        "num_heads num_kv_heads head_dim page_size max_pages part_len "
                        "max_parts scale",
    "decode_merge": "*part_out *part_ml *seq_lens *out num_heads head_dim part_len max_parts",
    "tc_tile_scores": "*q *k_cache *block_table *scores num_heads num_kv_heads head_dim "
                      "page_size seq_len",
    "quantize_write": "*k *slot_mapping num_kv_heads head_dim per_token *k_scale *k_cache",
    "dequant_decode": "*q *k_cache *v_cache *k_scale *v_scale *block_tables *seq_lens *out "
                      "num_heads num_kv_heads head_dim page_size max_pages per_token scale",
}
_STUBS["prefill_tiled"] = _STUBS["prefill_naive"]


def stub_params(kernel: str) -> list[tuple[str, bool]]:
    """(name, is an array) of each parameter of `kernel`'s stub, in order ([] for a kernel
    that is no graded task)."""
    if kernel in _STUBS:
        return [(word.lstrip("*"), word.startswith("*")) for word in _STUBS[kernel].split()]
    for puzzle in PUZZLES.values():
        if puzzle.kernel == kernel:
            head = f'extern "C" __global__ void {puzzle.signature} {{}}'
            return [(p.name, p.is_pointer) for p in parse_kernel_signature(head, kernel)]
    return []


def stub_arrays(kernel: str) -> list[str]:
    """The array parameters of `kernel`'s stub, by name, in order."""
    return [name for name, is_array in stub_params(kernel) if is_array]


def name_as_stub(exc: BaseException, kernel: str) -> None:
    """Give a launch's fault in an argument (its `arg_index`) the stub's name of that
    parameter as `stub_buffer`, beside the kernel's own name (`buffer`)."""
    index, params = getattr(exc, "arg_index", None), stub_params(kernel)
    if isinstance(index, int) and 0 <= index < len(params):
        try:
            exc.stub_buffer = params[index][0]
        except AttributeError:   # (an exception that takes no attributes: named as it came)
            pass


def stub_buffer(exc: BaseException) -> str | None:
    """The stub's name of the argument a fault names (the kernel's own name where the
    launch knew no stub, None where it names no argument): what hints are looked up by."""
    stub = getattr(exc, "stub_buffer", None)
    return stub if isinstance(stub, str) else getattr(exc, "buffer", None)


def as_named(own: str, stub: str | None) -> str:
    """A parameter as the learner's kernel names it, with the stub's name beside it where
    the two differ: `kc (the stub's k_cache)`."""
    return own if not stub or own == stub else f"{own} (the stub's {stub})"


def by_stub_names(counts, names: list[str]):
    """`counts` with its arrays' counts filed under the stub's parameter names `names`: the
    checks ask for the counts of `a`, `q` or `k_cache` by the names the prompts use."""
    arrays = [k for k in counts.by_buffer if not k.startswith("__device__ ")]
    if len(arrays) != len(names) or arrays == names:
        return counts
    renamed = {stub: counts.by_buffer[own] for stub, own in zip(names, arrays)}
    renamed.update((k, v) for k, v in counts.by_buffer.items() if k not in arrays)
    return _Renamed(counts, renamed)


class _Renamed:
    """The counts of a launch with `by_buffer` keyed otherwise; the rest is the launch's (the
    counts may live in the grader's kernel host, where nothing can be set on them)."""

    def __init__(self, counts, by_buffer: dict):
        self._counts, self.by_buffer = counts, by_buffer

    def __getattr__(self, name: str):
        return getattr(self._counts, name)
