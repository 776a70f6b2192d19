"""The checks of torch tensors made before they are shared as NumPy or CuPy arrays
(attention_common.shared_arrays): shared, a torch.bfloat16 tensor is uint16 bits and an index
tensor a NumPy or CuPy array, so a refusal made afterwards would name that library's dtypes
and fixes, which a torch caller may not use (uint16 among them), not torch's."""
from __future__ import annotations

import numpy as np

from .backend import is_cupy_array, is_torch_tensor
from .validate_kinds import integer_conversion

DTYPE_NAMES = ("float32", "float16", "bfloat16")   # the element types a KV cache holds

# The arguments that hold attention values (never page ids, lengths or scales). Shared, a
# torch.bfloat16 tensor becomes uint16 bits: a torch.uint16 tensor there, which holds integers,
# would come out the same and be read as bfloat16 values.
VALUE_ARGUMENTS = frozenset({"q", "k", "v", "k_cache", "v_cache", "out"})

# The integer arguments' dtypes: page ids, lengths and offsets int32, vLLM's slots int64
INDEX_DTYPES = {"block_tables": "int32", "block_table_row": "int32", "seq_lens": "int32",
                "qo_indptr": "int32", "indptr": "int32", "indices": "int32",
                "last_page_len": "int32", "slot_mapping": "int64"}


def check_not_uint16_values(x, name: str) -> None:
    """Refuse a torch.uint16 tensor `x` in value argument `name` (VALUE_ARGUMENTS)."""
    if name in VALUE_ARGUMENTS and str(x.dtype) == "torch.uint16":
        raise TypeError(f"{name}: expected a float32, float16 or bfloat16 tensor, got "
                        f"torch.uint16, which holds integers; bfloat16 values go in a "
                        f"torch.bfloat16 tensor ({name}.view(torch.bfloat16) if these are "
                        f"their bits)")


def check_index_width(x, name: str) -> None:
    """Refuse a torch integer tensor `x` of another width than index argument `name` takes
    (INDEX_DTYPES), naming torch's conversion: shared, it is a NumPy or CuPy array, whose
    refusal would name that library's."""
    got, want = str(x.dtype).replace("torch.", ""), INDEX_DTYPES.get(name)
    hint = integer_conversion(got, [want], name, "torch") if want and \
        got.startswith(("int", "uint")) else ""
    if hint:
        raise TypeError(f"{name}: expected dtype {want}, got {got}{hint}")


def check_cache_tensor(x, name: str) -> None:
    """Refuse a torch cache `x` of no element type the caches' readers take (decode, gather,
    write_kv: DTYPE_NAMES), as a tensor: shared, a torch.bfloat16 cache is uint16 bits, and
    the array's refusal would offer uint16, which torch callers may not pass
    (check_not_uint16_values). An fp8 tensor is left to from_torch, which names the view to
    its codes."""
    got = str(x.dtype).replace("torch.", "")
    if got not in DTYPE_NAMES and not got.startswith("float8"):
        raise TypeError(f"{name}: expected dtype {' or '.join(DTYPE_NAMES)}, got {got}")


def tensor_element(x) -> str | None:
    """The element type (one of DTYPE_NAMES) of torch tensor `x`; None for anything else."""
    got = str(x.dtype).replace("torch.", "") if is_torch_tensor(x) else None
    return got if got in DTYPE_NAMES else None


def check_tensor_dtypes(named: dict, want: str | None, source: str) -> None:
    """Refuse, in torch's words, a torch tensor among `named` (value arguments: name -> value)
    whose dtype is not torch.<want> (one of DTYPE_NAMES; None: nothing to compare with; source:
    whence want, as the message says it: "as planned", "k_cache's"). torch.uint16 and fp8
    tensors are left to check_not_uint16_values and from_torch, which name the view they need."""
    for name, x in named.items():
        got = str(getattr(x, "dtype", ""))
        if (want is None or not is_torch_tensor(x) or got in (f"torch.{want}", "torch.uint16")
                or got.startswith("torch.float8")):
            continue
        raise TypeError(f"{name}: expected dtype torch.{want} ({source}), got {got}")


def check_like_k_cache(k_cache, **named) -> None:
    """check_tensor_dtypes of a one-shot call's values against k_cache's torch dtype (when
    k_cache is a tensor: the call's dtype is the cache's)."""
    check_tensor_dtypes(named, tensor_element(k_cache), "k_cache's")


def check_planned_tensors(dtype: str, kv_format, q, k_cache, v_cache, out) -> None:
    """check_tensor_dtypes of a wrapper run's values against its plan's `dtype`: q and out
    alone where the plan reads compressed pages (`kv_format` not None), whose caches hold codes
    of the format's own dtype."""
    values = dict(q=q, out=out) if kv_format is not None else \
        dict(q=q, k_cache=k_cache, v_cache=v_cache, out=out)
    check_tensor_dtypes(values, dtype, "as planned")


def check_one_kind(named: dict) -> None:
    """Refuse values (VALUE_ARGUMENTS) with bfloat16 among them of which some are torch tensors
    and some NumPy or CuPy arrays: bfloat16 has no dtype the libraries share. Shared, a
    torch.bfloat16 tensor is uint16 bits, and beside it a NumPy uint16 array of integers would
    pass for bfloat16 too, while an ml_dtypes.bfloat16 array would differ from it in dtype
    alone. float32 and float16 values may mix (each library's dtype is the same); index
    arguments and scales may be either, holding no bfloat16."""
    values = {n: x for n, x in named.items() if n in VALUE_ARGUMENTS and x is not None}
    tensors = [n for n, x in values.items() if is_torch_tensor(x)]
    arrays = [n for n, x in values.items() if isinstance(x, np.ndarray) or is_cupy_array(x)]
    if tensors and arrays and any(_bfloat16_kind(x) for x in values.values()):
        name = arrays[0]
        raise TypeError(f"{name}: expected a torch tensor like {tensors[0]} (with bfloat16 "
                        f"among them, values are all torch tensors or all arrays), got "
                        f"{type(values[name]).__module__}.ndarray; "
                        f"{_as_tensor(values[name], name)} shares its memory")


def _bfloat16_kind(x) -> bool:
    """x holds bfloat16 in some library's form: torch's, ml_dtypes', or uint16 (bits on CuPy
    and in a shared torch.bfloat16 tensor; integers on NumPy)."""
    return str(getattr(x, "dtype", "")) in ("torch.bfloat16", "bfloat16", "uint16")


def _as_tensor(x, name: str) -> str:
    """The expression that makes array `x` (argument `name`) a torch tensor of its values,
    bfloat16 included: ml_dtypes' on NumPy, uint16 bits (CuPy's bfloat16; on NumPy, bits
    meant as bfloat16 beside bfloat16 tensors) viewed as torch.bfloat16."""
    bits = ".view(torch.bfloat16)" if x.dtype == np.uint16 else ""
    if is_cupy_array(x):
        return f"torch.from_dlpack({name}){bits}"
    if x.dtype.name == "bfloat16":
        return f"torch.from_numpy({name}.view(np.uint16)).view(torch.bfloat16)"
    return f"torch.from_numpy({name}){bits}"
