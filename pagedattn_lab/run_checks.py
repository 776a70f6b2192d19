"""The errors `BatchDecodeWrapper.run` raises: its fast check (`_check_run`) accepts or
refuses its arguments in one expression; when it refuses, `explain_run` finds which argument
and says what was expected and what came."""
from __future__ import annotations

from .attention_common import check_aligned16, check_storage
from .backend import check_contiguous
from .validate import bf16_bits_hint
from .validate_kinds import dtype_label
from .words import counted


def explain_run(plan, q, k, v, out, qshape, dtypes):
    """Raise the error that BatchDecodeWrapper._check_run found, naming the argument (plan:
    the wrapper; dtypes: those q and out may have in this call)."""
    where = "GPU: expected a CuPy" if plan.on_gpu else "CPU: expected a NumPy"
    names = " or ".join(d.name for d in dtypes)
    fmt = plan.kv_format
    for name, x in (("q", q), ("k_cache", k), ("v_cache", v), ("out", out)):
        if not isinstance(x, plan._array_type):
            raise TypeError(f"{name}: the plan runs on the {where} array or a torch tensor, "
                            f"got {type(x).__module__}.{type(x).__name__}")
        if fmt is not None and name in ("k_cache", "v_cache"):
            check_storage(x, fmt, name, planned=True)
        elif x.dtype not in dtypes:
            bits = bf16_bits_hint(x, plan.dtype == "bfloat16")
            raise TypeError(f"{name}: the plan is for {plan.dtype}: expected dtype {names}, "
                            f"got {dtype_label(x.dtype)}{bits}")
        check_contiguous(x, name)
        check_aligned16(**{name: x})
    for name, x in (("q", q), ("out", out)):
        if tuple(x.shape) != qshape:
            raise ValueError(f"{name}: expected shape {qshape} (the plan's batch, num_heads, "
                             f"head_dim), got {tuple(x.shape)}")
    page = (plan.page_size, plan.num_kv_heads, plan.head_dim)
    if k.ndim != 4 or tuple(k.shape[1:]) != page:
        raise ValueError(f"k_cache: expected shape [num_pages, {', '.join(map(str, page))}] "
                         f"(the plan's page_size, num_kv_heads, head_dim), got {tuple(k.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"v_cache: expected the shape of k_cache {tuple(k.shape)}, got "
                         f"{tuple(v.shape)}")
    if not k.shape[0] > plan.max_page:
        raise ValueError(f"k_cache: the plan reads page {plan.max_page}, but the cache has "
                         f"only {counted(k.shape[0], 'page')}")
    if not (q.dtype == out.dtype and (fmt is not None or q.dtype == k.dtype == v.dtype)):
        raise TypeError(f"q, k_cache, v_cache, out: expected one dtype, got {q.dtype.name}, "
                        f"{k.dtype.name}, {v.dtype.name}, {out.dtype.name}")
    raise AssertionError("unreachable: _check_run refused arguments explain_run accepts")
