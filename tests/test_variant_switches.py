"""The mistake models refuse a switch that names no mistake: a typo would model the right
answer, and the hint it stands for would never fire."""
import numpy as np
import pytest

from pagedattn_lab.grading.decode_variants import merge_variant, partials_variant
from pagedattn_lab.grading.variants import attention_variant
from pagedattn_lab.grading.cases import PagedProblem


def _cache():
    rng = np.random.default_rng(0)
    k = rng.standard_normal((3, 4, 2, 8))
    return rng.standard_normal((1, 2, 8)), k, k + 1, np.array([[2, 0]], np.int32), \
        np.array([6], np.int32)


@pytest.mark.parametrize("switch", [{"slot_bug": "unscale"}, {"mask": "causual"},
                                    {"kv_map": "modulo"}, {"online_bug": "no_divide"},
                                    {"mode": "decoding"}])
def test_attention_variant_refuses_an_unknown_switch(switch):
    name, value = next(iter(switch.items()))
    with pytest.raises(ValueError, match=f"^{name}: expected one of .*got {value!r}"):
        attention_variant(*_cache(), 0.3, **{"mode": "decode", **switch})


def test_every_documented_switch_is_accepted():
    args = _cache()
    for bugs in ({"slot_bug": "swap"}, {"slot_bug": "unscaled"}, {"kv_map": "by_kv_heads"},
                 {"online_bug": "old_max"}):
        assert attention_variant(*args, 0.3, mode="decode", **bugs).shape == (1, 2, 8)


@pytest.mark.parametrize("switch", [{"paging": "unscale"}, {"bounds": "inclusve"},
                                    {"q_head": "kv_head"}, {"kv_map": "zero"},
                                    {"online_bug": "old_max"}])
def test_partials_variant_refuses_an_unknown_switch(switch):
    q, k, v, tables, lens = _cache()
    prob = PagedProblem(q, k, v, tables, lens, 0.3, "decode")
    name, value = next(iter(switch.items()))
    with pytest.raises(ValueError, match=f"^{name}: expected one of .*got {value!r}"):
        partials_variant(prob, 4, **switch)
    assert partials_variant(prob, 4, paging="unscaled")[2].shape[:3] == (1, 2, 2)


def test_merge_variant_refuses_an_unknown_bug():
    m, l, o = np.zeros((1, 2)), np.ones((1, 2)), np.ones((1, 2, 3))
    with pytest.raises(ValueError, match="^bug: expected one of .*got 'no_rescaling'"):
        merge_variant(m, l, o, np.array([2]), bug="no_rescaling")
    assert np.allclose(merge_variant(m, l, o, np.array([2]), bug="none"), 1.0)
