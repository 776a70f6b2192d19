"""Workbook 11's checks fail the classic wrong answers, with a hint that names the mistake.

kv_scales: wrong scale functions written here. The two kernels: the solution notebook's
source with one mistake edited in (the edit must apply, so these tests follow the
solutions). Each case asserts that the check fails (not "not attempted"), that the
printed hint contains the phrase that points at the mistake and, where a wrong hint would be
tempting, that no hint names a mistake the evidence does not show. Other right answers
(edited the same way) must pass.
"""
import numpy as np
import pytest

from tests.test_check_mistakes import assert_caught, mutate, run_check, solution_source
from tests.check_helpers import assert_kernel_checks_on_the_gpu

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
    ("static: per head over every token", lambda x, q: np.broadcast_to(
        _guard(np.abs(x).max((0, 2)), q), x.shape[:2]), "a static scale"),
    ("the whole tensor", lambda x, q: np.full(x.shape[:2], _guard(np.abs(x).max(), q)),
     "amax of the whole tensor"),
    ("int8's 127 for fp8", lambda x, q: _guard(np.abs(x).max(-1), 127), "not int8's 127"),
    ("e4m3fnuz's 240", lambda x, q: _guard(np.abs(x).max(-1), 240 if q == 448 else q),
     "e4m3fnuz"),
    ("e5m2's 57344", lambda x, q: _guard(np.abs(x).max(-1), 57344 if q == 448 else q), "e5m2"),
    ("the number of levels", lambda x, q: _guard(np.abs(x).max(-1), 2 * q + 1),
     "not the number of levels"),
    ("inverse", lambda x, q: _guard(q / np.maximum(np.abs(x).max(-1), 1e-30), 1),
     "not its inverse"),
    ("NaN for a zero row", lambda x, q: np.where(np.abs(x).max(-1) > 0, np.abs(x).max(-1) / q,
                                                 np.nan), "yours is nan there"),
    ("float16", lambda x, q: _guard(np.abs(x).max(-1), q).astype(np.float16), "float32"),
    ("keepdims", lambda x, q: _guard(np.abs(x).max(-1, keepdims=True), q), "keepdims"),
    ("a threshold for zero", lambda x, q: np.where(np.abs(x).max(-1) > 1e-2,
                                                   np.abs(x).max(-1) / q, 1.0),
     "only an all-zero row gets scale 1"),
    ("a floor on the scale", lambda x, q: np.maximum(_guard(np.abs(x).max(-1), q), 1e-4),
     "scales stop at"),
    ("abs in place (right scales)", lambda x, q: _guard(np.abs(x, out=x).max(-1), q),
     "changed its input x"),
]

# Other right answers: a zero row may get any finite positive scale (it stores zeros).
SCALE_ALTERNATIVES = [
    ("times 1 / qmax", lambda x, q: _guard(np.abs(x).max(-1), 1 / np.float32(1 / q))),
    ("epsilon floor", lambda x, q: (np.maximum(np.abs(x).max(-1), 1e-8) / q).astype(np.float32)),
    ("max(max, -min) in float64", lambda x, q: np.where(   # (returned as the spec's float32)
        np.abs(x).max(-1) > 0, np.maximum(x.max(-1), -x.min(-1)).astype(np.float64) / q,
        1.0).astype(np.float32)),
]

CLAMP = "(signed char)fminf(fmaxf(rintf(row[d] / scale), -127.0f), 127.0f)"
NAN_TEST = ("row[d] != row[d] ? 0            // NaN: code 0 (the clamp would give -127)\n"
            "                 : ")
LOOP = "for (int d = lane; d < head_dim; d += 32)\n        dst[d]"

WRITE_MISTAKES = [
    ("truncation", [("rintf(row[d] / scale)", "(float)(int)(row[d] / scale)")], "truncates"),
    ("roundf", [("rintf(row[d] / scale)", "roundf(row[d] / scale)")], "halves to even"),
    ("no saturation", [(CLAMP, "(signed char)(int)rintf(row[d] / scale)")], "saturate"),
    ("multiplied", [("rintf(row[d] / scale)", "rintf(row[d] * scale)")], "not x * scale"),
    ("no abs", [("fmaxf(amax, fabsf(row[d]))", "fmaxf(amax, row[d])")], "largest magnitude"),
    ("amax reduced from offset 8 (half the warp)", [("int offset = 16;", "int offset = 8;")],
     "first offset must be 16"),
    ("amax reduced down to offset 2 only", [("offset > 0;", "offset > 1;")],
     "must run down to offset 1"),
    ("token for slot", [("k_scale[slot * num_kv_heads + head] = scale",
                         "k_scale[token * num_kv_heads + head] = scale")],
     "laid out like the pages"),
    ("no lane stride", [(LOOP, LOOP.replace("d < head_dim;", "d < head_dim && d < 32;"))],
     "never written"),
    ("clamp to -128", [(CLAMP, CLAMP.replace("-127.0f", "-128.0f"))], "symmetric"),
    ("amax / 128", [("amax / 127.0f", "amax / 128.0f")], "not / 128"),
    ("no zero guard", [("amax > 0.0f ? amax / 127.0f : 1.0f", "amax / 127.0f")],
     "give it scale 1"),
    ("padding row written", [("if (slot < 0) return;", "")], "padding row"),
    ("NaN through the clamp", [(NAN_TEST, "")], "nan input is stored as code 0"),
    ("scale twice", [("rintf(row[d] / scale)", "rintf(row[d] / scale / scale)")],
     "divide by the scale once"),
    ("no scale", [("rintf(row[d] / scale)", "rintf(row[d])")], "rintf(x) itself"),
    ("floorf(x + 0.5)", [("rintf(row[d] / scale)", "floorf(row[d] / scale + 0.5f)")],
     "rounds halves up"),
    ("codes at the token's row", [("(slot * num_kv_heads + head) * head_dim",
                                   "((long long)token * num_kv_heads + head) * head_dim")],
     "not to its row in k"),
    ("no warp reduction", [("int offset = 16;", "int offset = 0;")], "reduce it over the warp"),
    ("shfl_down, no broadcast", [("__shfl_xor_sync(0xffffffffu, amax, offset)",
                                  "__shfl_down_sync(0xffffffffu, amax, offset)")],
     "broadcast it"),
    ("inverse scale stored", [("k_scale[slot * num_kv_heads + head] = scale",
                               "k_scale[slot * num_kv_heads + head] = 1.0f / scale")],
     "not its inverse"),
    ("static scale read per token", [("scale = k_scale[head];",
                                      "scale = k_scale[slot * num_kv_heads + head];")],
     "one static scale per head"),
    ("last dim skipped", [(LOOP, LOOP.replace("d < head_dim", "d < head_dim - 1"))],
     "every d from 0 to head_dim - 1", ["stride"]),
    ("floorf", [("rintf(row[d] / scale)", "floorf(row[d] / scale)")], "rintf",
     ["never written"]),   # a computed code can equal the fill value: no evidence of that
    ("one static scale for every head", [("scale = k_scale[head];", "scale = k_scale[0];")],
     "not k_scale[0]"),
]

# Other right answers: float rounding of the scale, another clamp or rounding call, an
# epsilon floor, another reduction or loop order.
WRITE_ALTERNATIVES = [
    ("xor offsets upward", [("for (int offset = 16; offset > 0; offset /= 2)",
                             "for (int offset = 1; offset < 32; offset *= 2)")]),
    ("times 1 / 127", [("amax / 127.0f", "amax * (1.0f / 127.0f)")]),
    ("times 1 / scale", [("rintf(row[d] / scale)", "rintf(row[d] * (1.0f / scale))")]),
    ("int clamp", [(CLAMP, "(signed char)max(-127, min(127, __float2int_rn(row[d] / "
                           "scale)))")]),
    ("clamp, then rint", [(CLAMP, "(signed char)rintf(fminf(fmaxf(row[d] / scale, -127.0f), "
                                  "127.0f))")]),
    ("epsilon floor", [("amax > 0.0f ? amax / 127.0f : 1.0f", "fmaxf(amax, 1e-8f) / 127.0f")]),
    ("shfl_down, then broadcast", [("__shfl_xor_sync(0xffffffffu, amax, offset)",
                                    "__shfl_down_sync(0xffffffffu, amax, offset)"),
                                   ("scale = amax > 0.0f", "amax = __shfl_sync(0xffffffffu, "
                                    "amax, 0);\n        scale = amax > 0.0f")]),
    ("lanes from the end", [(LOOP, LOOP.replace("int d = lane; d < head_dim; d += 32",
                                                "int d = head_dim - 1 - lane; d >= 0; d -= 32"))]),
    ("isnan", [(NAN_TEST, "isnan(row[d]) ? 0 : ")]),
    # PTX's cvt turns NaN into 0, so this needs no NaN test on the GPU, nor on the CPU executor
    ("int clamp, NaN left to the conversion", [
        (NAN_TEST, ""), (CLAMP, "(signed char)max(-127, min(127, __float2int_rn(row[d] / "
                                "scale)))")]),
]

K_READ = "((float)k_cache[row + d] * ks)"
V_READ = "((float)v_cache[row + d] * vs)"
AT = "per_token ? slot * num_kv_heads + kv_head : kv_head"

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
    ("K codes alone unsigned", [(K_READ, "((float)(unsigned char)k_cache[row + d] * ks)")],
     "read the K codes as signed char"),
    ("V codes alone unsigned", [(V_READ, "((float)(unsigned char)v_cache[row + d] * vs)")],
     "read the V codes as signed char"),
    ("K scale forgotten", [(K_READ, "((float)k_cache[row + d])")],
     "multiply each K code by its scale"),
    ("divided by the scales", [(K_READ, K_READ.replace("*", "/")),
                               (V_READ, V_READ.replace("*", "/"))], "do not divide"),
    ("scales applied twice", [(K_READ, "((float)k_cache[row + d] * ks * ks)"),
                              (V_READ, "((float)v_cache[row + d] * vs * vs)")],
     "multiplied by the scale twice"),
    ("K with V's scale", [("float ks = k_scale[at]", "float ks = v_scale[at]")], "not v_scale"),
    ("scales swapped", [("ks = k_scale[at], vs = v_scale[at]",
                         "ks = v_scale[at], vs = k_scale[at]")], "swapped"),
    ("position for slot", [(AT, "per_token ? (long long)t * num_kv_heads + kv_head : kv_head")],
     "not to its position t"),
    ("slot without the head", [(AT, "per_token ? slot : kv_head")], "not k_scale[slot]"),
    ("query head for kv head", [(AT, "per_token ? slot * num_kv_heads + h : h")],
     "not the query head h"),
    ("per_token ignored", [(AT, "slot * num_kv_heads + kv_head")], "index kv_head alone"),
    ("no softmax scale", [("float s = dot * scale;", "float s = dot;")], "softmax scale"),
    ("one static scale for every head", [(AT, "per_token ? slot * num_kv_heads + kv_head : 0")],
     "not k_scale[0]"),
    # the online softmax wrong, the dequantization right: no hint may blame the scales
    ("acc not rescaled", [("acc[d] = acc[d] * rescale + w", "acc[d] = acc[d] + w")],
     "rescale acc", ["its scale", "k_scale[kv_head]"]),
    ("l not rescaled", [("l = l * rescale + w;", "l = l + w;")], "rescale l",
     ["its scale", "k_scale[kv_head]"]),
    ("running max not kept", [("        m = m_new;\n", "")], "m = m_new",
     ["its scale", "k_scale[kv_head]"]),
]

# Other right answers: the scales applied per score and per weight instead of per element.
READ_ALTERNATIVES = [
    ("K scale on the dot", [("dot += q_row[d] * ((float)k_cache[row + d] * ks);",
                             "dot += q_row[d] * (float)k_cache[row + d];"),
                            ("float s = dot * scale;", "float s = dot * ks * scale;")]),
    ("V scale on the weight", [("w * ((float)v_cache[row + d] * vs)",
                                "(w * vs) * (float)v_cache[row + d]")]),
]

KERNELS = [("quantize_write", "SOURCE_WRITE", m) for m in WRITE_MISTAKES] + \
          [("dequant_decode", "SOURCE_READ", m) for m in READ_MISTAKES]


@pytest.mark.parametrize("name, impl, phrase", SCALE_MISTAKES, ids=[m[0] for m in SCALE_MISTAKES])
def test_scale_mistake_is_caught(name, impl, phrase):
    assert_caught("kv_scales", impl, phrase)


@pytest.mark.parametrize("task, variable, mistake", KERNELS,
                         ids=[f"{t}-{m[0]}" for t, _, m in KERNELS])
def test_kernel_mistake_is_caught(task, variable, mistake):
    _, edits, phrase, *not_phrases = mistake
    assert_caught(task, mutate(solution_source(NOTEBOOK, variable), edits), phrase,
                  not_phrases=not_phrases[0] if not_phrases else (), device="cpu")


@pytest.mark.parametrize("name, impl", SCALE_ALTERNATIVES, ids=[a[0] for a in SCALE_ALTERNATIVES])
def test_scale_alternative_passes(name, impl):
    result, printed = run_check("kv_scales", impl)
    assert result.passed, printed


ALTERNATIVES = [("quantize_write", "SOURCE_WRITE", a) for a in WRITE_ALTERNATIVES] + \
               [("dequant_decode", "SOURCE_READ", a) for a in READ_ALTERNATIVES]


@pytest.mark.parametrize("task, variable, alternative", ALTERNATIVES,
                         ids=[f"{t}-{a[0]}" for t, _, a in ALTERNATIVES])
def test_kernel_alternative_passes(task, variable, alternative):
    _, edits = alternative
    result, printed = run_check(task, mutate(solution_source(NOTEBOOK, variable), edits),
                                device="cpu")
    assert result.passed, printed


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


# On the GPU (the same wrong and right answers; tests/test_check_mistakes_kernels.py does the
# same for the other workbooks). Out-of-bounds reads of a scale array: the CPU executor's
# guard pages name them, the GPU reads on without a fault, so there they fail with the general
# hint. A float converted to unsigned char: x86 wraps -5.0f to 0xFB, the right byte, where the
# GPU saturates it to 0, so that mistake shows on the GPU only.
OUT_OF_BOUNDS_READS = {"static scale read per token", "query head for kv head", "per_token ignored"}
GPU_ONLY_WRITE_MISTAKES = [
    ("unsigned char", [(CLAMP, CLAMP.replace("(signed char)", "(unsigned char)"))],
     "the codes are signed"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("task, variable", [("quantize_write", "SOURCE_WRITE"),
                                            ("dequant_decode", "SOURCE_READ")])
def test_kernel_checks_on_the_gpu(task, variable):
    mistakes = KERNELS + [("quantize_write", "SOURCE_WRITE", m) for m in GPU_ONLY_WRITE_MISTAKES]
    assert_kernel_checks_on_the_gpu(
        task, NOTEBOOK, variable, [m[:3] for t, _, m in mistakes if t == task],
        rights=[r for t, _, r in ALTERNATIVES if t == task],
        other_evidence=OUT_OF_BOUNDS_READS, stub=False)


# Failures that are no quantization mistake: each must get its own message, never a scale or
# layout hint the evidence does not show.
OTHER_FAILURES = [
    ("quantize_write", "SOURCE_WRITE", [("float scale;", "float scale")],
     "does not compile", "fix the first error the compiler reports"),
    ("quantize_write", "SOURCE_WRITE", [("if (slot < 0) return;", "return;")],
     "nothing was written", "store every code at its slot"),
    ("dequant_decode", "SOURCE_READ", [("float s = dot * scale;", "float s = dot * scale")],
     "does not compile", "fix the first error the compiler reports"),
    ("dequant_decode", "SOURCE_READ", [("float s = dot * scale;", "float s = 0.0f / 0.0f;")],
     "every output is nan", "out = acc / l"),
    ("dequant_decode", "SOURCE_READ", [("float dot = 0.0f;", "float dot = q_row[100000];")],
     "out-of-bounds read of q[100000]", "q is [batch, num_heads, head_dim]"),
    ("dequant_decode", "SOURCE_READ", [("out[((long long)b * num_heads + h) * head_dim + d]",
                                        "out[((long long)b * num_heads + h) * head_dim + d + 1]")],
     "out-of-bounds write of out", "out is [batch, num_heads, head_dim]"),
]


@pytest.mark.parametrize("task, variable, edits, message, hint", OTHER_FAILURES,
                         ids=[f"{t}-{m}" for t, _, _, m, _ in OTHER_FAILURES])
def test_other_kernel_failures_get_their_own_message(task, variable, edits, message, hint):
    result, printed = assert_caught(task, mutate(solution_source(NOTEBOOK, variable), edits),
                                    message, not_phrases=["k_scale", "v_scale", "padding"],
                                    device="cpu")
    first = next(c for c in result.cases if not c.passed)
    assert message in " ".join(first.message.split()).lower(), printed
    assert hint in " ".join(first.hint.split()), printed


def test_kv_scales_returning_none_is_told_to_return_them():
    result, printed = assert_caught("kv_scales", lambda x, q: None, "returned None")
    first = next(c for c in result.cases if not c.passed)
    assert first.message == "returned None", printed
    assert "return the scales, shape [n_tokens, num_kv_heads]" in first.hint, printed
