"""Review of hunts 92-98 (git diff fe7ee52 5af3379): what the review found, held here."""
from __future__ import annotations

import pytest

from pagedattn_lab.grading.kernel_lint import code_only, lint
from pagedattn_lab.grading.report import Mismatch

KERNEL = '__global__ void k(float *x) { x[0] = 1.0f; }\n'


def test_lint_brace_in_char_literal_does_not_lend_c_linkage():
    # the '{' kept the extern "C" block open in the lint's brace stack: a mangled kernel
    # (CuPy: named symbol not found) passed the lint
    src = 'extern "C" {\n__device__ char open_brace() { return \'{\'; }\n}\n' + KERNEL
    with pytest.raises(Mismatch, match='not declared extern "C"'):
        lint(src, "k")


def test_lint_brace_in_char_literal_does_not_close_the_block():
    src = 'extern "C" {\n__device__ char close_brace() { return \'}\'; }\n' + KERNEL + "}\n"
    lint(src, "k")


def test_lint_quote_in_char_literal_is_not_a_string():
    # '"' opened a string that ran to the next '"', hiding the kernel between them
    src = ('__device__ char q() { return \'"\'; }\nextern "C" ' + KERNEL +
           '__device__ char r() { return \'"\'; }\n')
    lint(src, "k")


def test_code_only_keeps_code_after_a_string_holding_slashes():
    code = code_only('const char *u = "http://x"; int after = 1;\n')
    assert "after" in code and "http" not in code


@pytest.mark.parametrize("other_branch", ["", '#else\nextern "C" __global__ void k(float* a);\n'],
                         ids=["no-else", "declared-in-else"])
def test_a_kernel_defined_only_in_a_branch_not_compiled_is_a_compile_error(other_branch):
    # its entry point now stands just past its definition, inside the #if: the build had
    # none, and ctypes' AttributeError ("undefined symbol: __pal_entry_k") came out
    import numpy as np

    from pagedattn_lab.cpu import KernelCompileError, RawKernel
    src = ('#ifdef FAST\nextern "C" __global__ void k(float* a) { a[0] = 1.0f; }\n'
           f'{other_branch}#endif\n')
    with pytest.raises(KernelCompileError, match=r"no definition of the kernel 'k'.*#if"):
        RawKernel(src, "k")((1,), (1,), (np.zeros(4, np.float32),))


def test_table_capacity_refuses_a_count_as_prefill_as_check_bool_does():
    # the one test of a flag (validate.check_bool), not a copy of it: its message names the type
    from pagedattn_lab.distributed.shard import table_capacity
    with pytest.raises(TypeError, match=r"^prefill: expected True or False, got 2 \(int\)$"):
        table_capacity(2, 3, 2)
    assert table_capacity(2, 3, True) == table_capacity(2, 3) + 3


def test_a_launch_bound_on_one_branchs_definition_is_not_the_other_branchs():
    # the #else definition took the #ifdef one's __launch_bounds__(64): a launch of 128
    # threads, which a GPU runs, was refused
    import numpy as np

    from pagedattn_lab.cpu import RawKernel
    from pagedattn_lab.signature import kernel_definitions
    src = ('#ifdef SMALL\nextern "C" __global__ void __launch_bounds__(64) k(float* a) '
           '{ a[threadIdx.x] = 1.0f; }\n#else\nextern "C" __global__ void k(float* a) '
           '{ a[threadIdx.x] = 2.0f; }\n#endif\n')
    assert [d[0] for d in kernel_definitions(src, "k")] == ["64", None]
    kern, a = RawKernel(src, "k"), np.zeros(128, np.float32)
    kern((1,), (128,), (a,))
    assert kern.max_threads_per_block == 1024 and (a == 2).all()
    # a bound on a declaration before both branches is both definitions'
    declared = 'extern "C" __global__ void __launch_bounds__(64) k(float* a);\n' + src
    assert [d[0] for d in kernel_definitions(declared, "k")] == ["64", "64"]


def test_extern_c_on_a_declaration_in_another_namespace_does_not_lend_c_linkage():
    # `extern "C" ... k(...);` at file scope declares ::k; the definition inside namespace lab
    # is lab::k, mangled: CuPy finds no k (named symbol not found), the executor ran lab::k
    import numpy as np

    from pagedattn_lab.cpu import KernelCompileError, RawKernel
    from pagedattn_lab.cpu.source import mangled_kernel_name
    body = '__global__ void k(float* a) { a[threadIdx.x] = 2.0f; }\n'
    src = 'extern "C" __global__ void k(float* a);\nnamespace lab {\n' + body + '}\n'
    with pytest.raises(KernelCompileError, match=r"\(lab::k\)"):
        RawKernel(src, "k")((1,), (4,), (np.zeros(4, np.float32),))
    # extern "C" on a declaration in its own namespace (here reopened): C linkage
    same = ('namespace lab { extern "C" __global__ void k(float* a); }\nnamespace lab {\n' +
            body + '}\n')
    assert mangled_kernel_name(same, "k") is None


@pytest.mark.parametrize("open_literal", ['"' + '\\"' * 16000, "/* " * 10000],
                         ids=["escaped-quotes", "open-comments"])
def test_the_lint_reads_literals_left_open_in_linear_time(open_literal):
    # each open literal was scanned to the end of the source from every start: 15 s (a
    # string of escaped quotes) and 5 s (comments) for 32 KiB, twice, before any time limit
    import time
    started = time.monotonic()
    with pytest.raises(Mismatch):
        lint(open_literal + "\n__global__ void k(float *x) {}", "k")
    assert time.monotonic() - started < 1.0


def test_a_template_kernel_is_refused_by_name_before_it_is_built():
    # its entry point, now just past its closing brace, failed to compile there: the error
    # stood at the learner's line of a lone '}', with no hint
    import numpy as np

    from pagedattn_lab.cpu import KernelCompileError, RawKernel
    src = 'template <int N>\n__global__ void k(float* a) {\n  a[threadIdx.x] = N;\n}\n'
    with pytest.raises(KernelCompileError, match=r"as a template.*named symbol not found") as e:
        RawKernel(src, "k")((1,), (4,), (np.zeros(4, np.float32),))
    assert "__device__ function" in " ".join(e.value.hints) and e.value.lineno is None
    # a template device function called by an extern "C" kernel runs
    ok = ('template <int N> __device__ float value() { return N; }\n'
          'extern "C" __global__ void k(float* a) { a[threadIdx.x] = value<3>(); }\n')
    a = np.zeros(4, np.float32)
    RawKernel(ok, "k")((1,), (4,), (a,))
    assert (a == 3).all()


def test_an_empty_batch_or_head_range_is_named_as_what_it_is():
    # "seq_lens: expected 0 lengths (..., at least one), got 0" and "KV heads 2..1 are not
    # within the cache's 4 KV heads": each named the wrong argument or the wrong reason
    import numpy as np

    from pagedattn_lab.distributed.shard import HeadRange, shard_cache
    from pagedattn_lab.viz.prefill_masks import plot_packed_masks
    with pytest.raises(ValueError, match=r"^qo_indptr: expected the offsets of at least one "):
        plot_packed_masks([0], [])
    with pytest.raises(ValueError, match=r"^seq_lens: expected 2 lengths .*got 1$"):
        plot_packed_masks([0, 1, 2], [3])
    cache = np.zeros((2, 2, 4, 2), np.float32)
    with pytest.raises(ValueError, match=r"^heads: expected at least one KV head, got the "
                                         r"empty range kv_start=2, kv_stop=2$"):
        shard_cache(cache, HeadRange(2, 2, 4, 4))
    with pytest.raises(ValueError, match=r"^heads: KV heads 2\.\.4 are not within the cache's"):
        shard_cache(cache, HeadRange(2, 5, 4, 10))
