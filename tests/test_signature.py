"""Kernel signatures parsed from CUDA C source, and the launch-argument check."""
from pathlib import Path

import numpy as np
import pytest

from pagedattn_lab.signature import (check_launch_args, collect_defines, find_kernels,
                                     parse_kernel_signature, strip_comments)

KERNELS = Path(__file__).parent / "kernels"

SOURCE = r'''
// extern "C" __global__ void commented_out(int x) {}
#define T float
typedef unsigned int u32;
/* a block comment with __global__ void fake(int y) */
extern "C" __global__ void __launch_bounds__(256, 2)
fancy(const T* __restrict__ a, u32 n, float out[], unsigned, const __half2 *h, void* raw,
      long long int big, int const * c, float* const d, __half* hp, double2 v, char* bytes,
      size_t count, unsigned char* u8)
{
}
extern "C" __global__ void plain(float *x, int n) {}
'''


def test_find_kernels_ignores_comments():
    assert find_kernels(SOURCE) == ["fancy", "plain"]


def test_strip_comments_keeps_lines():
    text = strip_comments(SOURCE)
    assert len(text) == len(SOURCE) and text.count("\n") == SOURCE.count("\n")
    assert "fake" not in text and "commented_out" not in text


def test_parse_types_names_and_constness():
    sig = parse_kernel_signature(SOURCE, "fancy")
    by = {p.name: p for p in sig}
    assert [p.index for p in sig] == list(range(len(sig)))
    assert by["a"].is_pointer and by["a"].dtype == np.float32 and by["a"].is_const
    assert not by["n"].is_pointer and by["n"].dtype == np.uint32
    assert by["out"].is_pointer and by["out"].dtype == np.float32 and not by["out"].is_const
    assert by["arg3"].dtype == np.uint32                       # unnamed `unsigned`
    assert by["h"].dtype == np.float16 and by["h"].is_const    # __half2* takes fp16 arrays
    assert by["raw"].dtype is None and by["bytes"].dtype is None  # void*/char*: anything
    assert by["big"].dtype == np.int64
    assert by["c"].dtype == np.int32 and by["c"].is_const      # int const *
    assert by["d"].dtype == np.float32 and not by["d"].is_const  # float* const
    assert by["hp"].dtype == np.float16
    assert by["v"].dtype is None and by["v"].itemsize == 16    # double2 by value
    assert by["count"].dtype == np.uint64
    assert by["u8"].dtype is None


def test_defines_from_options_resolve_types():
    src = "extern \"C\" __global__ void k(const scalar_t* x, int n) {}"
    sig = parse_kernel_signature(src, "k", collect_defines(src, ("-Dscalar_t=double",)))
    assert sig[0].dtype == np.float64


def test_missing_kernel_lists_the_ones_found():
    with pytest.raises(ValueError, match=r"'nope' not found.*fancy, plain"):
        parse_kernel_signature(SOURCE, "nope")


def test_course_kernels_parse():
    src = (KERNELS / "vector_add.cu").read_text()
    sig = parse_kernel_signature(src, "vector_add")
    assert [(p.name, p.ctype) for p in sig] == [
        ("a", "const float*"), ("b", "const float*"), ("c", "float*"), ("n", "int")]


SIG = parse_kernel_signature(SOURCE, "plain")   # (float *x, int n)


def test_accepts_right_arguments():
    check_launch_args(SIG, (np.zeros(3, np.float32), np.int32(3)), "plain", (np.ndarray,))


@pytest.mark.parametrize("value, suggestion", [(3, r"64-bit long long.*np\.int32\(3\)"),
                                               (3.0, r"64-bit double.*np\.int32\(3\.0\)"),
                                               (True, r"1-byte bool.*np\.int32\(True\)")])
def test_refuses_python_scalars(value, suggestion):
    with pytest.raises(TypeError, match=r"kernel 'plain', argument 1 of 2 \('n', int\).*"
                                        + suggestion):
        check_launch_args(SIG, (np.zeros(3, np.float32), value), "plain", (np.ndarray,))


def test_refuses_wrong_numpy_scalar():
    with pytest.raises(TypeError, match=r"argument 1 of 2 \('n', int\): expected np\.int32, "
                                        r"got np\.int64"):
        check_launch_args(SIG, (np.zeros(3, np.float32), np.int64(3)), "plain", (np.ndarray,))


def test_refuses_wrong_array_dtype():
    with pytest.raises(TypeError, match=r"argument 0 of 2 \('x', float\*\): expected a float32 "
                                        r"array, got a float64.*astype\(np\.float32\)"):
        check_launch_args(SIG, (np.zeros(3), np.int32(3)), "plain", (np.ndarray,))


def test_refuses_non_contiguous_array():
    a = np.zeros((4, 4), np.float32).T
    with pytest.raises(ValueError, match=r"'x'.*expected a C-contiguous array .*; call "
                                         r"np\.ascontiguousarray\(x\) first$"):
        check_launch_args(SIG, (a, np.int32(3)), "plain", (np.ndarray,))


def test_refuses_wrong_count_and_non_tuple():
    with pytest.raises(TypeError, match=r"takes 2 argument\(s\) \(float\* x, int n\), got 1"):
        check_launch_args(SIG, (np.zeros(3, np.float32),), "plain", (np.ndarray,))
    with pytest.raises(TypeError, match="must be a tuple"):
        check_launch_args(SIG, np.zeros(3, np.float32), "plain", (np.ndarray,))


def test_refuses_scalar_for_pointer_and_array_for_scalar():
    with pytest.raises(TypeError, match=r"'x'.*expected a float32 array.*np\.float32"):
        check_launch_args(SIG, (np.float32(1), np.int32(3)), "plain", (np.ndarray,))
    with pytest.raises(TypeError, match=r"'n'.*expected a scalar"):
        check_launch_args(SIG, (np.zeros(3, np.float32), np.zeros(1, np.int32)), "plain",
                          (np.ndarray,))


def test_any_dtype_for_void_and_char_pointers():
    sig = parse_kernel_signature(SOURCE, "fancy")
    args = [None] * len(sig)
    for p in sig:
        if p.is_pointer:
            args[p.index] = np.zeros(4, p.dtype if p.dtype is not None else np.float64)
        else:
            args[p.index] = np.zeros((), p.dtype if p.dtype is not None else np.complex128)[()]
    check_launch_args(sig, tuple(args), "fancy", (np.ndarray,))


def test_bfloat16_and_fp8_take_ml_dtypes_or_their_bits():
    import ml_dtypes
    src = ('extern "C" __global__ void k(const __nv_bfloat16* a, __nv_bfloat162* b, '
           '__nv_fp8_e4m3* c, const __nv_fp8_e5m2* d, __nv_bfloat16 s) {}')
    sig = parse_kernel_signature(src, "k")
    assert [p.dtype for p in sig] == [np.dtype(ml_dtypes.bfloat16)] * 2 + [
        np.dtype(ml_dtypes.float8_e4m3fn), np.dtype(ml_dtypes.float8_e5m2),
        np.dtype(ml_dtypes.bfloat16)]
    bf, e4, e5 = ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2
    for arrays in ((bf, bf, e4, e5), (np.uint16, np.uint16, np.uint8, np.uint8)):
        args = tuple(np.zeros(4, t) for t in arrays) + (np.uint16(0),)
        check_launch_args(sig, args, "k", (np.ndarray,))
    check_launch_args(sig, tuple(np.zeros(4, t) for t in (bf, bf, e4, e5)) + (bf(1.5),), "k",
                      (np.ndarray,))
    with pytest.raises(TypeError, match=r"'a'.*bfloat16 \(or uint16 bits\).*got a float16"):
        check_launch_args(sig, (np.zeros(4, np.float16),) + tuple(
            np.zeros(4, t) for t in (bf, e4, e5)) + (np.uint16(0),), "k", (np.ndarray,))
    with pytest.raises(TypeError, match=r"'c'.*ml_dtypes\.float8_e4m3fn"):
        check_launch_args(sig, tuple(np.zeros(4, t) for t in (bf, bf, e5, e5)) +
                          (np.uint16(0),), "k", (np.ndarray,))


# ---- less common declarations ----------------------------------------------------------

def test_using_aliases_and_defines_given_as_options_resolve_types():
    src = 'using real = double;\nextern "C" __global__ void k(const real* a, T* b, U n) {}'
    defines = collect_defines(src, ["-D", "T=float", "--define-macro=U=int"])
    assert defines["real"] == "double" and defines["T"] == "float" and defines["U"] == "int"
    a, b, n = parse_kernel_signature(src, "k", defines)
    assert (a.dtype, a.is_const, b.dtype, n.dtype) == (np.float64, True, np.float32, np.int32)


@pytest.mark.parametrize("source, found", [
    ('template <int N> __global__ void t(float* x) {}\nextern "C" __global__ void p(int n) {}',
     ["p"]),                                   # templates left out on request
    ("__global__   ", []),                     # nothing after __global__
    ("__global__ void;", []),                  # a ';' before any '('
    ("__global__ void __launch_bounds__(256 k(int n)", []),   # an attribute never closed
])
def test_find_kernels_without_templates_and_on_truncated_heads(source, found):
    assert find_kernels(source, include_templates=False) == found


def test_attribute_calls_in_a_parameter_are_skipped():
    src = 'extern "C" __global__ void k(__align__(16) float* x, alignas(8) int n) {}'
    x, n = parse_kernel_signature(src, "k")
    assert (x.name, x.dtype, x.is_pointer, n.name, n.dtype) == ("x", np.float32, True, "n",
                                                                 np.int32)


def test_bits_stand_in_when_ml_dtypes_does_not_import(monkeypatch):
    import sys
    from pagedattn_lab import signature
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)   # import ml_dtypes -> ImportError
    assert signature._extra("__nv_bfloat16") == np.uint16
    assert signature._extra("__nv_fp8_e4m3") == np.uint8


PAIRS = 'extern "C" __global__ void k(float** rows, __nv_bfloat162 pair, float* maybe, int n) {}'


def test_null_pointers_and_pairs_by_value_are_accepted():
    sig = parse_kernel_signature(PAIRS, "k")
    assert (sig[1].dtype, sig[1].itemsize) == (None, 4)   # any 4-byte scalar, as for __half2
    check_launch_args(sig, (np.zeros(2, np.uint64), np.uint32(0), None, np.int32(1)), "k",
                      (np.ndarray,))


@pytest.mark.parametrize("index, value, exc, match", [
    (0, np.zeros(2, np.float32), TypeError,
     r"argument 0 of 4 \('rows', float\*\*\): a pointer-to-pointer parameter takes an array of "
     r"64-bit addresses, got a float32 NumPy array"),
    (1, np.float16(1), TypeError,
     r"argument 1 of 4 \('pair', __nv_bfloat162\): expected a 4-byte NumPy scalar for "
     r"__nv_bfloat162, got np\.float16"),
    (3, "3", TypeError, r"argument 3 of 4 \('n', int\): expected a NumPy scalar, got a "
                        r"builtins\.str"),
])
def test_refuses_pointer_tables_pair_sizes_and_non_numbers(index, value, exc, match):
    args = [np.zeros(2, np.uint64), np.uint32(0), None, np.int32(1)]
    args[index] = value
    with pytest.raises(exc, match=match):
        check_launch_args(parse_kernel_signature(PAIRS, "k"), tuple(args), "k", (np.ndarray,))


def test_an_array_of_the_other_library_is_told_where_arrays_must_live():
    class DeviceArray:   # stands for cupy.ndarray: the GPU's launch takes only those
        pass
    with pytest.raises(TypeError, match=r"'x'.*expected a float32 array \(\w+\."
                                        r"DeviceArray\), got a float32 NumPy array .*arrays "
                                        r"must live where the kernel runs"):
        check_launch_args(SIG, (np.zeros(3, np.float32), np.int32(3)), "plain", (DeviceArray,))
