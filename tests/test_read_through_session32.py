"""The read-through of session 32's change (git diff f60b256): what the three readers found,
each mended here with a test that fails before the mend."""
import numpy as np
import pytest

from pagedattn_lab import BatchDecodeWrapper, quant
from pagedattn_lab.decode_simt_plan import check_token_range
from pagedattn_lab.grading.source_builtins import device_types
from pagedattn_lab.grading.source_macros import device_conditional
from pagedattn_lab.grading.submissions import find_notebooks
from pagedattn_lab.viz import bench_plots


# -- the one-program lint ---------------------------------------------------------------------
def test_a_variadic_macro_that_makes_a_string_of_a_compilers_macro_is_refused():
    """`#define S(...) #__VA_ARGS__` took no parameters (`...` is no word), so it was not a
    stringifier: X(__CUDA_ARCH__) is "900" on the GPU, "__CUDA_ARCH__" on the CPU."""
    source = ("#define S(...) #__VA_ARGS__\n#define X(...) S(__VA_ARGS__)\n"
              "__global__ void k(float* o) { if (X(__CUDA_ARCH__)[0] == '_') __syncthreads(); }\n")
    refused = device_conditional(source)
    assert refused is not None and refused.got == "__CUDA_ARCH__", refused


def test_a_variadic_macro_tested_in_an_if_is_the_sources_own():
    """__VA_ARGS__ is the macro's parameter, not a word the source leaves undefined."""
    assert device_conditional("#define ON(...) __VA_ARGS__\n#if ON(1)\n#endif\n") is None


@pytest.mark.parametrize("binding", ["const auto& t = threadIdx;", "auto&& t = blockDim;",
                                     "const uint3 &t = blockIdx;"])
def test_a_reference_bound_to_a_built_in_variable_is_refused(binding):
    """sizeof(t) of a reference is the built-in's size: 1 on NVRTC, 12 on the executor."""
    refused = device_types(f"__global__ void k(int* o) {{ {binding} o[0] = sizeof(t); }}")
    assert refused is not None, binding


@pytest.mark.parametrize("query", ["alignof(float)", "alignof(int)", "alignof(unsigned int)",
                                   "__alignof__(double)", "alignof( __half )"])
def test_alignof_of_a_type_aligned_alike_on_both_builds_passes(query):
    assert device_types(f"__global__ void k(int* o) {{ o[0] = {query}; }}") is None


@pytest.mark.parametrize("query", ["alignof(float4)", "alignof(S)", "alignof(int4)"])
def test_alignof_of_a_vector_or_a_struct_is_still_refused(query):
    assert device_types(f"__global__ void k(int* o) {{ o[0] = {query}; }}") is not None


# -- submissions --------------------------------------------------------------------------------
def test_a_link_named_keeps_the_row_of_the_notebook_it_points_to(tmp_path):
    """`grade bob.ipynb f/` with bob.ipynb a link to f/alice.ipynb: alice had no row, and her
    work was graded as bob's alone."""
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "alice.ipynb").write_text("{}")
    (tmp_path / "bob.ipynb").symlink_to(folder / "alice.ipynb")
    found = find_notebooks([tmp_path / "bob.ipynb", folder])
    assert sorted(name for _, name in found) == sorted([str(tmp_path / "bob.ipynb"),
                                                        "alice.ipynb"]), found


def test_a_folder_named_twice_is_graded_once(tmp_path):
    (tmp_path / "a.ipynb").write_text("{}")
    assert len(find_notebooks([tmp_path, tmp_path / "a.ipynb", tmp_path])) == 1


# -- quant: one bad number where scales per head are due -------------------------------------
@pytest.mark.parametrize("value", [-1.0, 0.0, float("nan"), float("inf"), 1e-40])
def test_one_bad_number_for_static_scales_is_told_what_is_wrong_not_how_to_spread_it(value):
    """The hint np.full((3,), -1.0, np.float32) led to the next refusal."""
    with pytest.raises(ValueError, match=r"^k_scale: expected one static scale per KV head, "
                                         r"shape \(3,\), each finite, > 0 and not subnormal; "
                                         r"got the single number") as info:
        quant.check_scale(value, "k_scale", (3,))
    assert "np.full" not in str(info.value)


# -- plans ------------------------------------------------------------------------------------
def test_the_simt_refusal_names_the_load_step_where_it_sets_the_bound():
    """2^31 - 1000 tokens in partitions of 512: the partitions end within int32; the loads'
    step (2048 tokens) does not. It said "a partition's end ... with these partitions"."""
    with pytest.raises(ValueError) as info:
        check_token_range(np.array([2**31 - 1000]), 512)
    text = str(info.value)
    assert "its last load step's end passes 2^31 - 1 (at most 2147481600 tokens)" in text
    assert "a partition's end" not in text and "with these partitions" not in text, text


def test_an_unsplit_sequence_is_not_said_to_be_in_partitions():
    with pytest.raises(ValueError, match=r"^seq_lens\[0\]: 2147483647 tokens in one partition:"):
        check_token_range(np.array([2**31 - 1]), 2**31 - 1)


def test_a_batch_past_the_simt_grid_is_told_the_tensor_core_kernel_takes_it():
    with pytest.raises(ValueError, match=r"split the batch or the heads, or plan with "
                                         r"kernel='tensor_core'$"):
        BatchDecodeWrapper().plan(np.zeros((70000, 1), np.int32), np.ones(70000, np.int32), 2,
                                  1, 16, 1, "float16", kernel="simt")


# -- words ------------------------------------------------------------------------------------
def test_describe_shows_the_time_of_a_timestamp_written_with_a_space():
    assert bench_plots.describe({"gpu": "H100", "date": "2026-12-06 12:34"}) == \
        "H100, 2026-12-06 12:34"


# -- the CPU executor: a deferred read, then an assert or a trap ------------------------------
_READ_THEN = r"""
extern "C" __global__ void read_then(const float* x, float* out, int i)
{
    float a[4];
    for (int j = 0; j < 4; ++j) a[j] = x[j];
    float *p = a;
    const float r = p[i];
    STOP;
    out[threadIdx.x] = r;
}
"""


@pytest.mark.parametrize("stop", ["__trap()", "assert(r < -1e30f)"])
def test_a_read_past_an_array_is_reported_before_an_assert_or_trap_after_it(stop):
    """The read was deferred to the next barrier; an assert on its value, or a trap, came
    first and was reported instead of the read that caused it."""
    from pagedattn_lab.cpu import RawKernel
    from pagedattn_lab.cpu.compiler import compiler
    from pagedattn_lab.cpu.errors import KernelFault
    if compiler()[2]:
        pytest.skip("GCC's object-size check (Clang builds go without it)")
    x, out = np.arange(4, dtype=np.float32), np.zeros(1, np.float32)
    with pytest.raises(KernelFault, match=r"out-of-bounds read .* through `p\[i\]`"):
        RawKernel(_READ_THEN.replace("STOP", stop), "read_then")((1,), (1,),
                                                                (x, out, np.int32(5)))


# -- the lint's list of predefined macros: the builds' own flags ------------------------------
def test_the_predefined_macros_are_those_of_the_builds_flags():
    """prelude.py built its own command without the builds' BASE_FLAGS: -fno-math-errno
    defines __NO_MATH_ERRNO__ (missing from the list), -fno-exceptions drops __EXCEPTIONS
    (listed), so the lint let a guard on the one through and refused a test of the other."""
    from pagedattn_lab.cpu.compiler import compiler
    from pagedattn_lab.cpu.prelude import prelude_macros
    if compiler()[2]:
        pytest.skip("GCC's macro names")
    names = prelude_macros()
    assert names is not None and "__NO_MATH_ERRNO__" in names and "__EXCEPTIONS" not in names
