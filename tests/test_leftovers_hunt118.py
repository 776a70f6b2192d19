"""Leftovers of the morning's hunts (helper 118): a scale the kernels flush to 0 is refused;
a strided array's error names its own library's copy; the prefix hash names the int64 limit;
SamplingParams keeps Python numbers; the tile check's ldm hints come as one sentence."""
import numpy as np
import pytest

import pagedattn_lab as pal
from pagedattn_lab.validate_scale import LOG2E, resolve_scale

from .test_bad_input import H, KVH, D, decode, no_launch, prefill, problem  # noqa: F401
from .serve_loops import serve_loop
from .test_reference import make_paged_problem


# -- 1. a scale whose scale * log2(e) is subnormal in float32 -----------------------------------

@pytest.mark.parametrize("scale", [1e-40, 8e-39, 1e-44])
@pytest.mark.parametrize("call", [decode, prefill])
def test_scale_flushed_to_zero_is_refused(problem, monkeypatch, call, scale):  # noqa: F811
    # scale * log2(e) is a nonzero float32 subnormal, which -ftz flushes to 0: every score 0
    assert 0 < np.float32(scale * LOG2E) < np.finfo(np.float32).tiny
    no_launch(monkeypatch)
    with pytest.raises(ValueError, match=rf"^scale: {scale} times log2\(e\) is below float32's "
                                         r"smallest normal number 1\.18e-38, which the kernels "
                                         r"flush to 0 .*expected at least 8\.148e-39$"):
        call(problem, scale=scale)


def test_least_scale_named_is_accepted():
    # the least scale the refusal names: its scale * log2(e) is a normal float32
    assert np.float32(8.148e-39 * LOG2E) >= np.finfo(np.float32).tiny
    assert resolve_scale(8.148e-39, 64) == 8.148e-39
    assert resolve_scale(1e-30, 64) == 1e-30


# -- 2. a strided view: the fix in the array's own library --------------------------------------

def strided(x):
    """x's values in a view with every other element of a doubled last axis."""
    wide = np.repeat(x, 2, axis=-1)
    return wide[..., ::2]


@pytest.mark.parametrize("call, qkey", [(decode, "q_decode"), (prefill, "q_prefill")])
def test_numpy_strided_q_names_np_ascontiguousarray(problem, call, qkey):  # noqa: F811
    problem[qkey] = strided(problem[qkey])
    with pytest.raises(ValueError, match=r"^q: expected a C-contiguous array .*; call "
                                         r"np\.ascontiguousarray\(q\) first$"):
        call(problem)


torch = pytest.importorskip("torch")


def tensors(p, qkey):
    return {k: torch.from_numpy(p[k]) for k in (qkey, "k_cache", "v_cache", "block_tables",
                                                 "seq_lens")}


@pytest.mark.parametrize("arg", ["q", "k_cache", "v_cache", "out"])
@pytest.mark.parametrize("one_shot", ["decode", "prefill"])
def test_torch_strided_tensor_names_contiguous(problem, arg, one_shot):  # noqa: F811
    from pagedattn_lab.attention_decode import paged_attention_decode
    from pagedattn_lab.attention_prefill import paged_attention_prefill
    qkey = "q_prefill" if one_shot == "prefill" else "q_decode"
    t = tensors(problem, qkey)
    args = {"q": t[qkey], "k_cache": t["k_cache"], "v_cache": t["v_cache"],
            "out": torch.zeros_like(t[qkey])}
    args[arg] = torch.from_numpy(strided(args[arg].numpy()))
    assert not args[arg].is_contiguous()
    fn = paged_attention_prefill if one_shot == "prefill" else paged_attention_decode
    with pytest.raises(ValueError, match=rf"^{arg}: expected a contiguous tensor .*; call "
                                         rf"{arg}\.contiguous\(\) first$"):
        fn(args["q"], args["k_cache"], args["v_cache"], t["block_tables"], t["seq_lens"],
           out=args["out"])


def test_torch_strided_tensor_in_wrappers_and_write_kv(rng):
    k, v, tables, lens, _, _ = make_paged_problem(rng, [5, 8], 8, 2, 2, 32, dtype=np.float16)
    q = rng.standard_normal((2, 2, 32)).astype(np.float16)
    w = pal.wrappers.BatchDecodeWrapper()
    w.plan(tables, lens, 2, 2, 32, 8, np.float16)
    tq = torch.from_numpy(strided(q))
    with pytest.raises(ValueError, match=r"^q: .*; call q\.contiguous\(\) first$"):
        w.run(tq, torch.from_numpy(k), torch.from_numpy(v))
    # the NumPy path of the same wrapper names NumPy's copy
    with pytest.raises(ValueError, match=r"^q: .*; call np\.ascontiguousarray\(q\) first$"):
        w.run(strided(q), k, v)
    from pagedattn_lab.prefill_wrapper import BatchPrefillWrapper
    indptr = np.array([0, 5, 13], np.int32)
    qp = rng.standard_normal((13, 2, 32)).astype(np.float16)
    wp = BatchPrefillWrapper().plan(indptr, tables, lens, 2, 2, 32, 8, np.float16)
    with pytest.raises(ValueError, match=r"^v_cache: .*; call v_cache\.contiguous\(\) first$"):
        wp.run(torch.from_numpy(qp), torch.from_numpy(k), torch.from_numpy(strided(v)))
    from pagedattn_lab.cache_write import write_kv
    rows = torch.from_numpy(strided(rng.standard_normal((3, 2, 32)).astype(np.float16)))
    before = k.copy()
    with pytest.raises(ValueError, match=r"^k: .*; call k\.contiguous\(\) first$"):
        write_kv(rows, rows.contiguous(), torch.from_numpy(k), torch.from_numpy(v),
                 torch.tensor([0, 1, 2], dtype=torch.int32))
    np.testing.assert_array_equal(k, before)


# -- 3. the prefix hash on token ids past int64 -------------------------------------------------

@pytest.mark.parametrize("ids, index, value", [
    ([1, 2**64], 1, 2**64),              # object values: were refused as "object values"
    ([-2**63 - 1], 0, -2**63 - 1),
    ([2**63], 0, 2**63),                 # uint64: hashed as -2**63, another prompt's block
    ([2**63, -1], 0, 2**63),             # float64 values: were refused as floats
    (np.array([3, 2**63], np.uint64), 1, 2**63),
])
def test_hash_block_names_the_int64_limit(ids, index, value):
    from pagedattn_lab.engine.prefix_cache import hash_block
    with pytest.raises(ValueError, match=rf"^token_ids\[{index}\]: expected a token id that "
                                         rf"fits int64 \(the hash reads 8 bytes a token\), got "
                                         rf"{value}$"):
        hash_block(None, ids)


def test_hash_block_still_takes_every_int64_and_refuses_floats():
    from pagedattn_lab.engine.prefix_cache import hash_block
    edge = [2**63 - 1, -2**63]
    assert hash_block(None, edge) == hash_block(None, np.array(edge, np.int64))
    assert hash_block(None, np.array([5, 6], np.uint64)) == hash_block(None, [5, 6])
    assert hash_block(None, [2**63 - 1]) != hash_block(None, [-2**63])
    with pytest.raises(TypeError, match="^token_ids: expected a list of integer token ids, "
                                        "got object values"):   # a float among them
        hash_block(None, [1.5, 2**64])


# -- 4. SamplingParams stores Python numbers, as EngineConfig does -------------------------------

def test_sampling_params_store_python_numbers():
    from pagedattn_lab.engine.request import SamplingParams
    p = SamplingParams(max_tokens=np.int64(4), temperature=np.float32(0.5),
                       ignore_eos=np.bool_(True), seed=np.uint32(7),
                       return_logits=np.bool_(False))
    assert (p.max_tokens, p.temperature, p.ignore_eos, p.seed, p.return_logits) == \
        (4, 0.5, True, 7, False)
    for value, kind in ((p.max_tokens, int), (p.temperature, float), (p.ignore_eos, bool),
                        (p.seed, int), (p.return_logits, bool)):
        assert type(value) is kind
    assert type(SamplingParams(temperature=1).temperature) is int   # a Python int kept as given
    with pytest.raises(ValueError, match="^max_tokens: expected an int >= 1, got 0$"):
        SamplingParams(max_tokens=np.int64(0))


# -- 5. the tile check's ldm hints: one sentence where both loads' and Q's alone fit -------------

@pytest.mark.parametrize("wrong", ["16", "32"])
def test_tile_check_gives_one_ldm_hint_on_the_one_token_case(wrong):
    from tests.test_check_mistakes import mutate, run_check, solution_source
    source = mutate(solution_source("09_tensor_core_decode.ipynb", "SOURCE_TILE"),
                    [("q_tile + k0, head_dim", f"q_tile + k0, {wrong}"),
                     ("k_tile + k0, head_dim", f"k_tile + k0, {wrong}")])
    result, printed = run_check("tc_tile_scores", source, device="cpu")
    assert not result.passed
    one_token = " ".join(printed.split("one token (", 1)[1].split())   # case 4, unwrapped
    assert f"so ldm = head_dim, not {wrong}" in one_token, printed
    assert "in Q's load, and in K's if it has the same ldm (K's load gives these scores " \
           "either way)." in one_token, printed
    assert "these mistakes give the same" not in one_token and "(Q's load)" not in one_token


# -- 6. workbook 07's serve: the first failing case names an admission mistake ------------------

@pytest.mark.parametrize("admit, request_", [
    # one page promised per running sequence: request 3 (or 4) waits though it fits; the
    # first failing case's hint restated the spec (a step unlike it, or the order)
    (lambda a: a.total <= a.free - a.running, 3),
    (lambda a: a.prompt <= a.free - a.running, 4),
], ids=["whole request", "prompt only"])
def test_serve_one_page_per_running_sequence_is_named_on_its_first_failing_case(admit, request_):
    from tests.check_helpers import run_check
    result, printed = run_check("serve", serve_loop(admit))
    first = next(c for c in result.cases if not c.passed)
    hint = " ".join(first.hint.split())
    assert first.name == "a pool too small for all at once", printed
    assert hint.startswith(f"request {request_} waited at the head of the queue through a step "
                           "with 3 pages free and 1 promised to the running sequences (2 to "
                           "spare), and its 8 tokens take 2: "), printed
    assert "not one page per running sequence" in hint and "each step: admit" not in hint
