"""Check for lesson 11's Task 3: a decode kernel that dequantizes int8 pages on read (its
Tasks 1 and 2, the scales and quantize on write, are in checks_quant.py).

dequant_decode: one thread per (query head, sequence) attends over int8 pages, reading
code * scale for K and for V, with static scales (one per KV head) or per-token ones (laid out
like the pages). The cases mix GQA and MQA, V scales unlike K's, one token per page, a softmax
scale that is not 1/sqrt(head_dim), logits past float32's e^s range and logits all far below 0
(where e^s underflows, so a running max started at 0 divides 0 by 0); the static case's
group (2) is unlike its number of KV heads (3), so h / num_kv_heads for the KV head shows.
"""
from __future__ import annotations

import numpy as np

from .cases import paged_problem
from .checks_kernels import _Compiled
from .checks_quant import NOTHING_WRITTEN
from .compare import describe_difference, diagnose, kv_head_rule
from .decode_launch import DECODE_BUFFER_HINTS
from .stub_params import stub_buffer
from .faults import kernel_message
from .kernel_runner import poisoned, unwritten
from .quant_variants import READ_MISTAKES, read_logits, read_reference
from .report import Case, CheckResult, Mismatch, NotAttempted, run_cases, several_fit
from .seeds import case_rng


# -- task 3: dequantize on read, in CUDA C -------------------------------------------------

def _launch_read(comp, grid, args, per_token: int, heads: int, kv_heads: int):
    """The output after the launch; a fault in a scale array gets a hint from the index read,
    one in q or out the decode layout's (faults.py's own hint for q is prefill's)."""
    try:
        return comp.get().launch(grid, (1,), args, outputs=(7,))[0]
    except Exception as exc:
        buffer = stub_buffer(exc)
        if type(exc).__name__ != "KernelFault" or \
                buffer not in ("k_scale", "v_scale", "q", "out"):
            raise
        if buffer in ("q", "out"):
            hint = DECODE_BUFFER_HINTS[buffer]
        else:
            fits = _head_fault_hints(exc, per_token, heads, kv_heads)
            hint = several_fit(fits, "index") if fits else \
                _scale_fault_hint(buffer, exc, per_token, kv_heads)
        raise Mismatch(kernel_message(exc), hint) from exc


def _read_at(exc, per_token: int, kv_heads: int, wrong: int) -> bool:
    """Whether the scale read past the end is the one at KV index `wrong`, past the cache's
    KV heads: element slot * num_kv_heads + wrong for a slot in the array (per token), or
    `wrong` alone (static scales)."""
    size = getattr(exc, "size", None)
    row = exc.index - wrong   # slot * num_kv_heads per token, 0 static
    fits = (size is not None and 0 <= row < size and row % kv_heads == 0) if per_token \
        else row == 0
    return wrong >= kv_heads and fits


def _head_fault_hints(exc, per_token: int, heads: int, kv_heads: int) -> list[str]:
    """The hints for a scale read past the end at a wrong KV index made from the faulting
    block's query head h: h / num_kv_heads (not h / group), or h itself for a per-token
    scale (the query head, not kv_head). Both may fit one fault."""
    block = getattr(exc, "block", None)
    if not block or exc.index is None:   # (a fault that names no thread or index)
        return []
    h = int(block[0])
    hints = []
    if _read_at(exc, per_token, kv_heads, h // kv_heads):
        hints.append(f"query head {h} read KV head h / num_kv_heads = {h // kv_heads}, past "
                     f"the cache's last KV head, {kv_heads - 1} (element {exc.index} of "
                     f"{exc.buffer}): {kv_head_rule()} = {h // (heads // kv_heads)} here, "
                     "h / group (a group is consecutive query heads).")
    if per_token and _read_at(exc, per_token, kv_heads, h):
        hints.append(f"query head {h}'s scale was read at slot * num_kv_heads + h (element "
                     f"{exc.index} of {exc.buffer}, past its end): a per-token scale is "
                     "indexed with the KV head, slot * num_kv_heads + kv_head, like the codes.")
    return hints


def _scale_fault_hint(name: str, exc, per_token: int, kv_heads: int) -> str:
    """The hint for a scale read past the end of `name` that no head mapping explains: the
    query head is named only where the faulting block's own query head is the index read."""
    index = exc.index
    if per_token:
        return (f"per_token = 1: {name} is laid out like the pages, one scale per (slot, KV "
                f"head): index slot * num_kv_heads + kv_head, with the slot the block table "
                f"gives (element {index} is past the end).")
    block = getattr(exc, "block", None)
    if block and index == int(block[0]):
        return (f"per_token = 0: {name} holds one scale per KV head: index kv_head = h / "
                f"(num_heads / num_kv_heads), not the query head h (element {index} read).")
    return (f"per_token = 0: {name} holds one scale per KV head, {kv_heads} of them: index "
            f"kv_head alone, the same for every token whatever its slot or page (element "
            f"{index} read).")


def _read_case(comp, per_token, seq_lens, heads, kv_heads, dim, page_size, seed,
               max_logit=None, scale=None, top_logit=None):
    """`max_logit`: q scaled to make that the largest logit (past 88 e^s overflows float32);
    `top_logit` (< 0): K's codes positive and q negative, scaled so that every logit is at
    most that (below about -104 e^s underflows float32 to 0)."""
    prob = paged_problem(seed, mode="decode", seq_lens=seq_lens, num_heads=heads,
                         num_kv_heads=kv_heads, head_dim=dim, page_size=page_size)
    rng = case_rng(seed)
    shape = prob.k_cache.shape
    codes = [rng.integers(-127, 128, shape).astype(np.int8) for _ in "kv"]
    sshape = shape[:3] if per_token else (kv_heads,)
    scales = [rng.uniform(0.002, 0.01, sshape).astype(np.float32),
              rng.uniform(0.02, 0.05, sshape).astype(np.float32)]   # V's unlike K's
    scale = np.float32(1 / np.sqrt(dim) if scale is None else scale)
    if max_logit:
        logits = read_logits(prob, codes[0], scales[0], per_token, scale)
        top = logits.max() if logits.max() > 0 else logits.min()   # (< 0: q -> -q flips them)
        prob.q = (prob.q * np.float32(max_logit / top)).astype(np.float32)
    if top_logit:
        codes[0] = np.maximum(np.abs(codes[0]), 1).astype(np.int8)
        prob.q = -(np.abs(prob.q) + 1).astype(np.float32)
        top = read_logits(prob, codes[0], scales[0], per_token, scale).max()
        prob.q = (prob.q * np.float32(top_logit / top)).astype(np.float32)
    got = _launch_read(comp, (heads, len(seq_lens)), (
        prob.q, codes[0], codes[1], scales[0], scales[1], prob.block_tables, prob.seq_lens,
        poisoned(prob.q.shape), np.int32(heads), np.int32(kv_heads), np.int32(dim),
        np.int32(page_size), np.int32(prob.block_tables.shape[1]), np.int32(per_token), scale),
        per_token, heads, kv_heads)

    def ref(bug=None):
        return read_reference(prob, codes, scales, per_token, scale, bug)

    expected = ref()
    overflowed = ~np.isfinite(got) & ~unwritten(got)   # (unwritten: another mistake's NaN)
    if max_logit and overflowed.any() and np.isfinite(expected).all():
        b, h, d = np.argwhere(overflowed)[0]
        raise Mismatch(f"{int(overflowed.sum())} of {got.size} outputs are inf or NaN, "
                       f"the first at sequence {b}, head {h}, dim {d} (the logits here reach "
                       f"{max_logit:g})", "e^s overflows float32 for "
                       "s > 88 (inf / inf = NaN): subtract the running max, weigh each token by "
                       "e^(s - m_new), and rescale acc and l by e^(m - m_new) when it grows.",
                       "finite outputs", f"{got[b, h, d]}")
    if np.isnan(got).all():
        if "TODO" in comp.source:
            raise NotAttempted(NOTHING_WRITTEN)
        # all of these make every output NaN: the evidence cannot tell them apart
        raise Mismatch("every output is NaN", _underflow(top_logit) + "each token adds "
                       "e^(s - m_new) times its dequantized V row to acc and e^(s - m_new) to l; "
                       "out = acc / l. NaN everywhere is what a NaN score gives, or an inf on "
                       "the first token, where m = -inf (then 0 * inf or inf / inf = NaN): check "
                       "the rescale's sign (expf(m - m_new), not expf(m_new - m)) and the "
                       "weight's max (expf(s - m_new), the new one, not expf(s - m)).")
    diff = describe_difference(got, expected, ("sequence", "head", "dim"), atol=1e-4, rtol=1e-3)
    if diff is None:
        return
    hint = diagnose(got, expected, [(h, lambda bug=bug: ref(bug)) for bug, h in READ_MISTAKES],
                    atol=1e-4, rtol=1e-3)
    raise Mismatch(diff.message(), hint or (   # no known mistake: both halves of the spec
        "K element d of a token is k_cache[row + d] * its scale, V likewise with v_scale (at "
        "k_scale[kv_head] static, k_scale[slot * num_kv_heads + kv_head] per token); each token "
        "rescales acc and l by e^(m - m_new), adds its weight e^(s - m_new), then m = m_new."))


def _underflow(top_logit) -> str:
    """Where every logit is far below 0, the all-NaN hint's first suspects: a running max
    started at 0, or no max in the weight, weighs every token by e^s, which underflows to 0
    there (out = 0 / 0)."""
    if not top_logit:
        return ""
    return (f"every logit here is at most {top_logit:g}, where e^s underflows to 0 in float32: "
            "a running max started at 0 (not -inf), or a weight e^s with no max subtracted, "
            "weighs every token by e^s = 0, and out = 0 / 0 is NaN: start m at NEG_INF and "
            "subtract the running max in the weight, e^(s - m_new). With those right: ")


def dequant_decode(source: str, device: str = "auto") -> CheckResult:
    """Check the decode kernel over int8 pages (grid (num_heads, batch), one thread)."""
    comp = _Compiled(source, "dequant_decode", device)
    cases = [
        # (a group as large as num_kv_heads, as GQA 4/2's, makes h / num_kv_heads the KV head)
        ("static scales, GQA 6/3", dict(per_token=0, seq_lens=[13, 1, 6], heads=6, kv_heads=3,
                                        dim=16, page_size=4, seed=5)),
        ("per-token scales, MQA", dict(per_token=1, seq_lens=[9, 17], heads=3, kv_heads=1,
                                       dim=24, page_size=5, seed=6, scale=0.5)),
        ("per-token scales, one token per page", dict(per_token=1, seq_lens=[5, 2], heads=2,
                                                      kv_heads=2, dim=8, page_size=1, seed=7)),
        ("logits up to 120 (e^s past float32's range)",
         dict(per_token=1, seq_lens=[11, 4], heads=4, kv_heads=2, dim=16, page_size=4, seed=9,
              max_logit=120.0)),
        ("logits all below -150 (e^s underflows float32)",
         dict(per_token=0, seq_lens=[7, 12], heads=4, kv_heads=2, dim=16, page_size=4, seed=10,
              top_logit=-150.0)),
    ]
    return run_cases("dequant_decode", "dequant_decode: attention over int8 pages", [
        Case(name, {k: v for k, v in p.items() if k != "seed"}, lambda p=p: _read_case(comp, **p))
        for name, p in cases])
