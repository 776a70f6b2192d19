"""Hunt 101: the public-API defects an earlier hunt left (quant.dequantize, the viz cost and
picture helpers, the engine's kv_scales / params, translation_of), and the same kind of gap in
the rest of viz's exports.

Found (each test failed before its fix):
- quant.dequantize took scales of 0 (every value read back as 0), negative (signs flipped),
  NaN and inf, which quantize refuses; now both run one check (PagedKVCache.gather still
  reads back the per-token scale inf a row holding inf writes, as the kernel does).
- viz.costs.decode_cost / prefill_cost counted batch -1, tokens 10.5, seq_len -3 (negative
  bytes), "int8" and 3 query heads over 2 KV heads without a word; "garbage" was NumPy's
  "data type not understood".
- decode_map.decode_layout(3, ...) raised ZeroDivisionError; head_dim 2048 gave 0 thread
  groups, part_len 0 and group_size 0 a layout, int8 a 16-element vector.
- tensor_parallel.plot_step_bytes([]) failed inside matplotlib ("Data cannot be
  log-scaled"); plot_head_split drew "abc" as three pages, -1 (padding) as a page, failed
  on 5 with "has no len()", and on world_size 0 inside matplotlib.
- softmax.online_softmax_trace: "abc" and complex scores failed in NumPy's cast, naming
  nothing; True read as 1; values 5.0 raised IndexError.
- engine: kv_scales={"k": ..., "v": ...} was read as the scales "k" and "v" (a message about
  strings); generate(params=(p, p)) was refused as "expected a SamplingParams", though
  prompts may be any sequence: a tuple now works as a list does.
- viz.translation_of(cache, True, 0) raised KeyError where no sequence 1 lives, and found
  sequence 1 where one does (1.0 too); a list raised "unhashable type"; token "0" failed
  comparing str and int.
- the rest of viz's exports: demo_events(num_sequences=0 / page_size=0 / max_prompt=1)
  failed in NumPy's random, 30 sequences were named "[", "^"...; plot_states(per_row=0)
  raised ZeroDivisionError; plot_memory_timeline(max_legend=-1) dropped a legend entry;
  take_snapshot took step "a"; plot_engine_series drew page_size 0 and num_pages -1;
  plot_page_size_waste drew a chosen size that is not there and a target of -100%;
  describe_translation wrote "0 // -4 = 0" for sizes t was not translated with;
  AllocationStepper(start=2.5) failed inside ipywidgets.
"""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import pagedattn_lab as pl  # noqa: E402
from pagedattn_lab import quant, viz  # noqa: E402
from pagedattn_lab.distributed import step_bytes  # noqa: E402
from pagedattn_lab.engine import (EngineConfig, LLMEngine, LlamaModel,  # noqa: E402
                                  SamplingParams, random_weights, tiny_config)
from pagedattn_lab.viz import costs, decode_map  # noqa: E402
from pagedattn_lab.viz.tensor_parallel import plot_head_split, plot_step_bytes  # noqa: E402



# -- 1. quant.dequantize checks its scales as quantize does ---------------------------------

CODES = np.ones((2, 2, 4), np.int8)


@pytest.mark.parametrize("kv_dtype", ["int8", "fp8_e4m3"])
@pytest.mark.parametrize("scale, error, match", [
    (np.array([0.0, 1.0], np.float32), ValueError, r"scale\[0\] is 0\.0"),
    (np.array([1.0, -1.0], np.float32), ValueError, r"scale\[1\] is -1\.0"),
    (np.array([np.nan, 1.0], np.float32), ValueError, r"scale\[0\] is nan"),
    (np.array([1.0, np.inf], np.float32), ValueError, r"scale\[1\] is inf"),
    (np.array([[1.0, 1.0], [1.0, 0.0]], np.float32), ValueError, r"scale\[1, 1\] is 0\.0"),
], ids=["zero", "negative", "nan", "inf", "per-token-zero"])
def test_dequantize_refuses_what_quantize_refuses(kv_dtype, scale, error, match):
    codes = CODES if kv_dtype == "int8" else quant.encode(np.ones((2, 2, 4)), kv_dtype)
    for call in (lambda: quant.quantize(np.ones((2, 2, 4), np.float32), kv_dtype, scale),
                 lambda: quant.dequantize(codes, kv_dtype, scale)):
        with pytest.raises(error, match=r"^scale: every scale must be finite and > 0; " + match):
            call()


@pytest.mark.parametrize("scale, error, match", [
    (np.ones(3, np.float32), ValueError, r"^scale: expected shape \(2,\) \(static"),
    (np.ones(2) + 1j, TypeError, r"^scale: expected real numbers"),
    (["a", "b"], TypeError, r"^scale: expected real numbers"),
])
def test_dequantize_refuses_a_scale_of_another_shape_or_kind(scale, error, match):
    with pytest.raises(error, match=match):
        quant.dequantize(CODES, "int8", scale)


def test_dequantize_still_reads_valid_scales_as_before():
    rng = np.random.default_rng(101)
    x = rng.standard_normal((5, 2, 8)).astype(np.float32)
    for scale in (quant.static_scales(x, "int8"), quant.per_token_scales(x, "int8"),
                  [0.5, 2]):   # a list of static scales, as quantize takes it
        codes = quant.quantize(x, "int8", scale)
        want = codes.astype(np.float64) * np.asarray(scale, np.float64)[..., None]
        assert np.allclose(quant.dequantize(codes, "int8", scale), want, rtol=1e-6)


# -- 2. viz: the cost helpers, decode_layout, tensor_parallel, online softmax -----------------

@pytest.mark.parametrize("kwargs, error, match", [
    (dict(batch=-1), ValueError, r"^batch: expected an int >= 1, got -1"),
    (dict(batch=2.0), TypeError, r"^batch: expected an int, got 2\.0"),
    (dict(tokens=10.5), TypeError, r"^tokens: expected an int, got 10\.5"),
    (dict(tokens=1), ValueError, r"^tokens: expected at least one cached token per sequence "
                                 r"\(>= batch 2\), got 1"),
    (dict(num_heads=3), ValueError, r"^num_heads: 3 is not a multiple of num_kv_heads 2"),
    (dict(num_kv_heads=0), ValueError, r"^num_kv_heads: expected an int >= 1, got 0"),
    (dict(head_dim=-8), ValueError, r"^head_dim: expected an int >= 1, got -8"),
    (dict(dtype="int8"), TypeError, r"^dtype: expected float32, float16 or bfloat16, got int8"),
    (dict(dtype="garbage"), TypeError, r"^dtype: expected float32, float16 or bfloat16, got "
                                       r"'garbage'"),
])
def test_decode_cost_refuses_sizes_it_would_miscount(kwargs, error, match):
    args = dict(batch=2, tokens=10, num_heads=4, num_kv_heads=2, head_dim=8) | kwargs
    with pytest.raises(error, match=match):
        costs.decode_cost(**args)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(seq_len=-3), ValueError, r"^seq_len: expected an int >= 1, got -3"),
    (dict(seq_len=4.5), TypeError, r"^seq_len: expected an int, got 4\.5"),
    (dict(batch=0), ValueError, r"^batch: expected an int >= 1, got 0"),
    (dict(num_heads=True), TypeError, r"^num_heads: expected an int, got True"),
    (dict(head_dim="8"), TypeError, r"^head_dim: expected an int, got '8'"),
])
def test_prefill_cost_refuses_sizes_it_would_miscount(kwargs, error, match):
    args = dict(batch=2, seq_len=10, num_heads=4, head_dim=8) | kwargs
    with pytest.raises(error, match=match):
        costs.prefill_cost(**args)


def test_costs_of_valid_shapes_count_by_hand():
    # numbers of the lessons (notebook 08's D64) and NumPy ints, as the bench passes them
    d64 = costs.decode_cost(batch=64, tokens=149_713, num_heads=32, num_kv_heads=32,
                            head_dim=128, dtype="float16")
    assert d64.flops == 4 * 149_713 * 32 * 128
    assert d64.bytes == (2 * 149_713 * 32 + 2 * 64 * 32) * 128 * 2 and d64.dtype == "float16"
    p = costs.prefill_cost(np.int64(3), 5, 2, 16, np.float32)
    assert p.flops == 4 * 3 * 2 * 15 * 16 and p.bytes == 4 * 3 * 5 * 2 * 16 * 4
    assert costs.prefill_cost(1, 1, 1, 8, "bfloat16").dtype == "bfloat16"


@pytest.mark.parametrize("args, kwargs, error, match", [
    ((3, np.float32), {}, ValueError, r"^head_dim: the simt kernel takes head_dim a multiple "
                                      r"of 4 .*, got 3"),
    ((2048, np.float32), {}, ValueError, r"^head_dim: the simt kernel .* up to 256, got 2048"),
    ((0, np.float16), {}, ValueError, r"^head_dim: expected an int >= 1, got 0"),
    ((64.0, np.float16), {}, TypeError, r"^head_dim: expected an int, got 64\.0"),
    ((64, np.int8), {}, TypeError, r"^dtype: expected float32, float16 or bfloat16"),
    ((64, np.float32), dict(part_len=0), ValueError, r"^part_len: expected an int >= 1"),
    ((64, np.float32), dict(group_size=0), ValueError, r"^group_size: expected an int >= 1"),
])
def test_decode_layout_names_a_size_the_kernel_does_not_take(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        decode_map.decode_layout(*args, **kwargs)


def test_decode_layout_of_the_lesson_is_unchanged():
    layout = decode_map.decode_layout(64, np.float32, part_len=64)   # notebook 06's
    assert (layout.threads, layout.vec, layout.tg, layout.ngroups, layout.part_len) == \
        (128, 4, 16, 8, 64)
    assert decode_map.decode_layout(128, "bfloat16").vec == 8


def _rows(world=(1, 2)):
    return [(f"{w} GPUs", step_bytes([70, 33], num_heads=8, num_kv_heads=4, head_dim=16,
                                     page_size=16, world_size=w)) for w in world]


@pytest.mark.parametrize("rows, error, match", [
    ([], ValueError, r"^rows: expected at least one \(label, StepBytes\) pair, got none"),
    (None, TypeError, r"^rows: expected a list of \(label, StepBytes\) pairs, got None"),
    ([("1 GPU", 5)], TypeError, r"^rows\[0\]\[1\]\.tables: expected a number of bytes, got "
                                 r"None"),
    (["1 GPU"], TypeError, r"^rows\[0\]: expected a \(label, StepBytes\) pair, got '1 GPU'"),
    (_rows() + [("none", _rows()[0][1]._replace(kv_read=0))], ValueError,
     r"^rows\[2\]\[1\]\.kv_read: expected a number of bytes >= 1 \(drawn on a log scale\), "
     r"got 0"),
    ([("x", _rows()[0][1]._replace(output=-4))], ValueError,
     r"^rows\[0\]\[1\]\.output: expected a number of bytes >= 0"),
])
def test_plot_step_bytes_refuses_what_it_cannot_draw(rows, error, match, no_new_figures):
    with pytest.raises(error, match=match):
        plot_step_bytes(rows)


@pytest.mark.parametrize("args, error, match", [
    ((8, 4, 2, "abc"), TypeError, r"^pages: expected a list of page ids, got 'abc'"),
    ((8, 4, 2, 5), TypeError, r"^pages: expected a list of page ids, got 5 .*write \[5\]"),
    ((8, 4, 2, [3, 2.5]), TypeError, r"^pages\[1\]: expected an integer page id, got 2\.5"),
    ((8, 4, 2, [3, -1]), ValueError, r"^pages\[1\]: expected a page id >= 0, got -1 "
                                     r"\(padding\?"),
    ((8, 4, 0, [3]), ValueError, r"^world_size: expected an int >= 1, got 0"),
    ((8, 3, 1, [3]), ValueError, r"^num_heads: 8 is not a multiple of num_kv_heads 3"),
    ((4096, 4096, 1, [3]), ValueError, r"^num_heads, num_kv_heads, world_size, pages: the "
                                       r"picture would draw"),
])
def test_plot_head_split_names_a_bad_argument(args, error, match, no_new_figures):
    with pytest.raises(error, match=match):
        plot_head_split(*args)


def test_the_lesson_13_pictures_still_draw():
    fig = plot_head_split(8, 4, 2, [2, 3, 34, 18, 1])   # notebook 13's row
    texts = {t.get_text() for ax in fig.axes for t in ax.texts}
    assert {"2", "3", "34", "18", "1", "kv3"} <= texts
    fig = plot_step_bytes(_rows((1, 2, 4)))
    assert len(fig.axes[0].patches) == 3 + 2 + 2   # K/V read x 3; no wire bars for one GPU
    plt.close("all")


@pytest.mark.parametrize("scores, values, error, match", [
    ("abc", None, TypeError, r"^scores: expected real numbers .*got str96"),
    ([1 + 1j, 2], None, TypeError, r"^scores: expected real numbers .*got complex128"),
    ([True, False], None, TypeError, r"^scores: expected real numbers .*got bool"),
    (3.0, None, ValueError, r"^scores: expected a non-empty 1-D array, got shape \(\)"),
    ([1.0, 2.0], 5.0, ValueError, r"^values: expected \[2\] or \[2, d\] \(one row per score\), "
                                  r"got shape \(\)"),
    ([1.0, 2.0], np.ones((2, 1, 1)), ValueError, r"^values: expected \[2\] or \[2, d\]"),
    ([1.0, 2.0], ["a", "b"], TypeError, r"^values: expected real numbers"),
    ([1.0, 2.0], [1j, 2], TypeError, r"^values: expected real numbers"),
])
def test_online_softmax_names_scores_or_values_it_cannot_read(scores, values, error, match,
                                                              no_new_figures):
    for call in (viz.online_softmax_trace, viz.plot_online_softmax):
        with pytest.raises(error, match=match):
            call(scores, values)


def test_online_softmax_still_takes_ints_and_float16():
    tr = viz.online_softmax_trace(np.array([1, 3, 2]), np.array([1, 2, 3], np.float16))
    w = np.exp(np.array([1.0, 3.0, 2.0]) - 3)
    assert np.isclose(tr["output"][-1], (w / w.sum()) @ [1.0, 2.0, 3.0], rtol=1e-12)


# -- 3. the engine's kv_scales and per-prompt params ------------------------------------------

@pytest.fixture(scope="module")
def model():
    config = tiny_config()
    return LlamaModel(config, random_weights(config, seed=0))


@pytest.mark.parametrize("kind", ["dict", "set-like str"])
def test_engine_says_kv_scales_is_a_pair_of_arrays(model, kind):
    layers, heads = model.config.num_hidden_layers, model.config.num_key_value_heads
    s = np.ones((layers, heads), np.float32)
    kv_scales = {"k": s, "v": s} if kind == "dict" else "kv"
    config = EngineConfig(num_pages=16, page_size=4, kv_dtype="int8", kv_scale_scheme="static")
    with pytest.raises(ValueError, match=rf"^kv_scales: static scales need \(k_scales, "
                                         rf"v_scales\), a tuple or list of two float32 arrays "
                                         rf"\[{layers}, {heads}\] .*got "
                                         rf"{'dict' if kind == 'dict' else 'str'}$"):
        LLMEngine(model, config, kv_scales=kv_scales)
    LLMEngine(model, config, kv_scales=[s, s])   # a list and a tuple are pairs
    LLMEngine(model, config, kv_scales=(s, s))


def test_generate_takes_a_tuple_of_params_as_a_list(model):
    engine = LLMEngine(model, EngineConfig(num_pages=32, page_size=4))
    params = (SamplingParams(max_tokens=2), SamplingParams(max_tokens=3))
    outs = engine.generate([[1, 2], [3]], params)
    assert [len(o.output_ids) for o in outs] == [2, 3]
    again = engine.generate([[1, 2], [3]], list(params))
    assert [o.output_ids for o in outs] == [o.output_ids for o in again]
    with pytest.raises(ValueError, match=r"^params: expected 2 SamplingParams, got 1"):
        engine.generate([[1, 2], [3]], params[:1])
    with pytest.raises(TypeError, match=r"^params\[1\]: expected a SamplingParams, got 3"):
        engine.generate([[1, 2], [3]], (params[0], 3))


# -- 4. translation_of names a seq that is no sequence id -------------------------------------

@pytest.fixture
def cache():
    c = pl.PagedKVCache(8, 4, 2, 8, dtype=np.float32, device="cpu")
    for n in (5, 3):
        seq = c.add_sequence()
        c.append(seq, np.ones((n, 2, 8), np.float32), np.ones((n, 2, 8), np.float32))
    c.free_sequence(1)   # ids 0 and 2 live: True and 1.0 would look for sequence 1
    seq = c.add_sequence()
    c.append(seq, np.ones((1, 2, 8), np.float32), np.ones((1, 2, 8), np.float32))
    return c


@pytest.mark.parametrize("seq", [True, np.True_, 0.0, 2.0, 0j, [0]],
                         ids=["True", "np.True_", "0.0", "2.0", "0j", "list"])
def test_translation_of_refuses_a_seq_that_is_no_id(cache, seq, no_new_figures):
    for call in (viz.translation_of, viz.plot_translation):
        with pytest.raises(TypeError, match=r"^seq: expected a sequence id \(an int; a "
                                            r"replayed state's label\), got "):
            call(cache, seq, 0)


def test_translation_of_names_a_token_that_is_no_int_and_keeps_labels(cache):
    with pytest.raises(TypeError, match=r"^token: expected an int, got '0' \(str\)"):
        viz.translation_of(cache, 0, "0")
    with pytest.raises(KeyError, match=r"seq: no live sequence 1 "):
        viz.translation_of(cache, 1, 0)
    assert viz.translation_of(cache, np.int64(2), 0).token == 0
    state = viz.replay([("add", "A", 3)], num_pages=4, page_size=2)[-1]   # a string label
    t = viz.translation_of(state, "A", 2, num_kv_heads=1, head_dim=1)
    assert (t.virtual_page, t.offset) == (1, 0)


# -- the rest of viz's exports ----------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    (dict(num_sequences=0), ValueError, r"^num_sequences: expected an int >= 1, got 0"),
    (dict(num_sequences=30), ValueError, r"^num_sequences: expected an int <= 26, got 30"),
    (dict(page_size=0), ValueError, r"^page_size: expected an int >= 1, got 0"),
    (dict(max_prompt=1), ValueError, r"^max_prompt: expected an int >= 2, got 1"),
    (dict(steps=-1), ValueError, r"^steps: expected an int >= 0, got -1"),
    (dict(steps=2.5), TypeError, r"^steps: expected an int, got 2\.5"),
    (dict(seed=2.5), TypeError, r"^seed: expected an int, got 2\.5"),
])
def test_demo_events_names_a_bad_size(kwargs, error, match):
    with pytest.raises(error, match=match):
        viz.demo_events(**kwargs)


def test_demo_events_of_the_lesson_are_unchanged():
    events = viz.demo_events()
    assert len(events) == 24 and events[0][0] == "add"
    assert {e[1] for e in events} <= set("ABCDE")
    assert viz.demo_events(seed=np.int64(0)) == events


@pytest.mark.parametrize("call, error, match", [
    (lambda st, sn: viz.plot_states(st, per_row=0), ValueError,
     r"^per_row: expected an int >= 1, got 0"),
    (lambda st, sn: viz.plot_states(st, per_row=2.5), TypeError,
     r"^per_row: expected an int, got 2\.5"),
    (lambda st, sn: viz.plot_memory_timeline(sn, max_legend=-1), ValueError,
     r"^max_legend: expected an int >= 0, got -1"),
    (lambda st, sn: viz.take_snapshot(st[0], "a"), TypeError,
     r"^step: expected an int, got 'a'"),
    (lambda st, sn: viz.take_snapshot(st[0], 1.5), TypeError,
     r"^step: expected an int, got 1\.5"),
], ids=["per_row-0", "per_row-float", "max_legend", "step-str", "step-float"])
def test_page_pictures_name_a_bad_size(call, error, match, no_new_figures):
    states = viz.replay(viz.demo_events(), num_pages=12, page_size=4)
    snaps = [viz.take_snapshot(s, i) for i, s in enumerate(states)]
    with pytest.raises(error, match=match):
        call(states, snaps)


SERIES = {k: [1, 2] for k in ("running", "pages_used", "tokens_stored", "decode_tokens",
                              "prefill_tokens", "waiting", "swapped", "hit_rate")}


@pytest.mark.parametrize("call, error, match", [
    (lambda: viz.plot_engine_series(SERIES, 10, 0), ValueError,
     r"^page_size: expected an int >= 1, got 0"),
    (lambda: viz.plot_engine_series(SERIES, -1, 4), ValueError,
     r"^num_pages: expected an int >= 1, got -1"),
    (lambda: viz.plot_engine_series(SERIES, 10, 2.5), TypeError,
     r"^page_size: expected an int, got 2\.5"),
    (lambda: viz.plot_page_size_waste({8: 0.1, 16: 0.02}, 5), ValueError,
     r"^chosen: expected one of the page sizes \[8, 16\], got 5"),
    (lambda: viz.plot_page_size_waste({8: 0.1, 16: 0.02}, 16, -1), ValueError,
     r"^max_waste: expected a share of the slots in \[0, 1\], got -1"),
    (lambda: viz.plot_page_size_waste({"8": 0.1, 16: 0.02}, 16), ValueError,
     r"^waste: expected page sizes \(ints >= 1\) as keys, got '8'"),
    (lambda: viz.plot_page_size_waste({8: 0.1, 16: float("nan")}, 16), ValueError,
     r"^waste\[16\]: expected a share of the slots in \[0, 1\], got nan"),
    (lambda: viz.plot_page_size_waste({}, 16), ValueError,
     r"^waste: expected \{page size: waste share\}"),
], ids=["page_size-0", "num_pages-neg", "page_size-float", "chosen-missing", "target-neg",
        "key-str", "share-nan", "empty"])
def test_engine_pictures_name_a_bad_size(call, error, match, no_new_figures):
    with pytest.raises(error, match=match):
        call()


def test_page_size_waste_still_draws_the_choice_orange():
    fig = viz.plot_page_size_waste({np.int64(8): 0.01, 16: np.float64(0.03), 32: 0.2}, 16)
    colors = [matplotlib.colors.to_hex(p.get_facecolor()) for p in fig.axes[0].patches]
    assert colors == ["#7cb5ec", "#f7a35c", "#7cb5ec"]
    plt.close(fig)


def test_describe_translation_refuses_sizes_t_was_not_translated_with(cache):
    t = viz.translation_of(cache, 0, 4, kv_head=1, dim=3)
    assert viz.describe_translation(t, 4, 2, 8, 1, 3).endswith("(4 * 2 + 1) * 8 + 3 = 75")
    with pytest.raises(ValueError, match=r"^page_size: expected an int >= 1, got -4"):
        viz.describe_translation(t, -4, 2, 8, 1, 3)
    with pytest.raises(ValueError, match=r"^page_size: expected 4, got 8, which puts token 4 "
                                         r"at virtual page 0, offset 4"):
        viz.describe_translation(t, 8, 2, 8, 1, 3)
    with pytest.raises(ValueError, match=r"^kv_head: expected 0\.\.1, got 5"):
        viz.describe_translation(t, 4, 2, 8, 5, 3)
    with pytest.raises(TypeError, match=r"^t: expected a Translation"):
        viz.describe_translation(tuple(t)[:5], 4, 2, 8, 1, 3)


def test_allocation_stepper_names_a_start_that_is_no_int():
    pytest.importorskip("ipywidgets")
    with pytest.raises(TypeError, match=r"^start: expected an int, got 2\.5"):
        viz.AllocationStepper(viz.demo_events(), num_pages=12, page_size=4, start=2.5)
    plt.close("all")


def test_page_map_takes_a_numpy_int_for_ncols():
    """np.int64(4) (a size read off an array) was refused as "expected a positive int"."""
    state = viz.replay([("add", "A", 5)], 8, 4)[-1]
    cells = viz.page_cells(viz.plot_page_map(state, ncols=np.int64(4)))
    assert cells == viz.page_cells(viz.plot_page_map(state, ncols=4))
    plt.close("all")
