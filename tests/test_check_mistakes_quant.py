"""Workbook 11's checks fail the classic wrong answers, with a hint that names the mistake.

kv_scales: wrong scale functions written here. The two kernels: the solution notebook's
source with one mistake edited in (the edit must apply, so these tests follow the
solutions). Each case asserts that the check fails (not "not attempted") and that the
printed hint contains the phrase that points at the mistake.
"""
import numpy as np
import pytest

from tests.test_check_mistakes import assert_caught, mutate, run_check, solution_source

NOTEBOOK = "11_kv_compression.ipynb"


def _guard(amax, qmax):
    return np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)


SCALE_MISTAKES = [
    ("no abs", lambda x, q: _guard(x.max(-1), q), "largest MAGNITUDE"),
    ("times qmax", lambda x, q: _guard(np.abs(x).max(-1), 1 / q), "not amax * qmax"),
    ("qmax + 1", lambda x, q: _guard(np.abs(x).max(-1), q + 1), "divide by the qmax"),
    ("no zero guard", lambda x, q: (np.abs(x).max(-1) / q).astype(np.float32), "scale 1"),
    ("over the tokens", lambda x, q: _guard(np.abs(x).max(0), q), "over the tokens"),
    ("over the heads", lambda x, q: _guard(np.abs(x).max(1), q), "over the heads"),
    ("over the whole token", lambda x, q: np.repeat(_guard(np.abs(x).max((1, 2)), q)[:, None],
                                                    x.shape[1], 1), "mixes heads"),
    ("NaN", lambda x, q: np.full(x.shape[:2], np.nan, np.float32), "a nan your code computed"),
    ("one per token, broadcastable", lambda x, q: _guard(np.abs(x).max((1, 2)), q)[:, None],
     "one scale per (token, kv head)"),
]

WRITE_MISTAKES = [
    ("truncation", [("rintf(row[d] / scale)", "(float)(int)(row[d] / scale)")], "truncates"),
    ("roundf", [("rintf(row[d] / scale)", "roundf(row[d] / scale)")], "halves to even"),
    ("no saturation", [("(signed char)fminf(fmaxf(rintf(row[d] / scale), -127.0f), 127.0f)",
                        "(signed char)(int)rintf(row[d] / scale)")], "saturate"),
    ("multiplied", [("rintf(row[d] / scale)", "rintf(row[d] * scale)")], "not x * scale"),
    ("no abs", [("fmaxf(amax, fabsf(row[d]))", "fmaxf(amax, row[d])")], "largest magnitude"),
    ("token for slot", [("k_scale[slot * num_kv_heads + head] = scale",
                         "k_scale[token * num_kv_heads + head] = scale")], "laid out like the pages"),
    ("no lane stride", [("for (int d = lane; d < head_dim; d += 32)\n        dst[d]",
                         "for (int d = lane; d < head_dim && d < 32; d += 32)\n        dst[d]")],
     "never written"),
]

READ_MISTAKES = [
    ("V scale forgotten", [("((float)v_cache[row + d] * vs)", "((float)v_cache[row + d])")],
     "multiply each V code by its scale"),
    ("V with K's scale", [("vs = v_scale[at]", "vs = k_scale[at]")], "not k_scale"),
    ("static index for per-token", [("per_token ? slot * num_kv_heads + kv_head : kv_head",
                                     "kv_head")], "not k_scale[kv_head]"),
    ("unsigned codes", [("((float)k_cache[row + d] * ks)",
                         "((float)(unsigned char)k_cache[row + d] * ks)"),
                        ("((float)v_cache[row + d] * vs)",
                         "((float)(unsigned char)v_cache[row + d] * vs)")], "signed"),
]

KERNELS = [("quantize_write", "SOURCE_WRITE", m) for m in WRITE_MISTAKES] + \
          [("dequant_decode", "SOURCE_READ", m) for m in READ_MISTAKES]


@pytest.mark.parametrize("name, impl, phrase", SCALE_MISTAKES, ids=[m[0] for m in SCALE_MISTAKES])
def test_scale_mistake_is_caught(name, impl, phrase):
    assert_caught("kv_scales", impl, phrase)


@pytest.mark.parametrize("task, variable, mistake", KERNELS,
                         ids=[f"{t}-{m[0]}" for t, _, m in KERNELS])
def test_kernel_mistake_is_caught(task, variable, mistake):
    _, edits, phrase = mistake
    assert_caught(task, mutate(solution_source(NOTEBOOK, variable), edits), phrase, device="cpu")


@pytest.mark.parametrize("task, variable", [("quantize_write", "SOURCE_WRITE"),
                                            ("dequant_decode", "SOURCE_READ")])
def test_kernel_checks_pass_the_solution_and_report_the_stub(task, variable):
    result, printed = run_check(task, solution_source(NOTEBOOK, variable), device="cpu")
    assert result.passed, printed
    result, printed = run_check(task, solution_source(NOTEBOOK, variable, "exercises"),
                                device="cpu")
    assert result.status == "not attempted" and "Traceback" not in printed, printed


def test_scale_check_passes_the_reference_and_reports_the_stub():
    from pagedattn_lab.quant import per_token_scales
    result, printed = run_check("kv_scales", lambda x, q: per_token_scales(
        x, "int8" if q == 127 else "fp8_e4m3"))
    assert result.passed, printed

    def stub(x, q):
        raise NotImplementedError
    result, printed = run_check("kv_scales", stub)
    assert result.status == "not attempted"
