"""The page-map pictures and the event replay on awkward inputs: a clear error naming the
argument, before any figure is made, instead of a crash, an endless draw or a quiet lie."""
import time

import matplotlib.pyplot as plt
import numpy as np
import pytest

from pagedattn_lab import PagedKVCache, viz
from pagedattn_lab.viz.state import PageMapState, replay



def test_a_huge_cache_is_refused_at_once(no_new_figures):
    started = time.monotonic()
    with pytest.raises(ValueError, match="num_pages: 1000000 pages is too many"):
        viz.plot_page_map(PageMapState(1_000_000, 16))
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("kwargs, match", [
    (dict(ncols=-1), "ncols"), (dict(ncols=0), "ncols"), (dict(ncols=2.5), "ncols"),
    (dict(highlight=99), "highlight: page 99"), (dict(highlight=(0, 4)), "highlight: offset 4"),
    (dict(highlight=(-1, 0)), "highlight: page -1"),
])
def test_bad_layout_arguments_are_refused_by_name(no_new_figures, kwargs, match):
    state = replay([("add", "A", 5)], 4, 4)[-1]
    with pytest.raises(ValueError, match=match):
        viz.plot_page_map(state, **kwargs)


def test_an_empty_pool_and_no_states_are_refused(no_new_figures):
    with pytest.raises(ValueError, match="num_pages"):
        viz.plot_page_map(PageMapState(0, 4))
    with pytest.raises(ValueError, match="states"):
        viz.plot_states([])


@pytest.mark.parametrize("events, match", [
    ([("append", "Z", 3)], r"events\[0\]: no live sequence 'Z'"),
    ([("add", "A", 3), ("add", "A", 2)], r"events\[1\]: 'A' is already a live sequence"),
    ([("fork", "B", "Z")], r"events\[0\]: no live sequence 'Z' to fork from"),
    ([("free", "A")], r"events\[0\]: no live sequence 'A'"),
    ([("add", "A", -3)], r"events\[0\]: expected a token count"),
    ([("add", "A", 2.5)], r"events\[0\]: expected a token count"),
    ([("add", "A")], r"events\[0\]: a 'add' event has 3 items"),
    (["add A 3"], r"events\[0\]: expected a tuple"),
])
def test_malformed_events_are_refused_not_noted_as_failures(events, match):
    with pytest.raises(ValueError, match=match):
        replay(events, 8, 4)


def test_a_full_pool_is_still_a_note_and_its_victims_are_skipped():
    states = replay([("add", "A", 5), ("fork", "B", "A"), ("append", "B", 1),
                     ("add", "A", 2), ("fork", "B", "A")], 4, 1)
    notes = [s.note for s in states]
    assert notes[1] == "add A failed: OutOfPagesError"
    assert "skipped" in notes[2] and "skipped" in notes[3]
    assert states[-1].tables == {"A": [0, 1], "B": [0, 1]}


# -- the serving simulator and its charts ---------------------------------------------------

def test_a_workload_too_big_to_sample_is_refused_by_name():
    from pagedattn_lab.sim import Workload
    with pytest.raises(ValueError, match="num_requests: expected an int <= "):
        Workload(num_requests=10**9)


@pytest.mark.parametrize("call, error, match", [
    (lambda: viz.plot_sim_timeline("paged"), TypeError, "result: expected a SimResult"),
    (lambda: viz.plot_policy_batches({}), ValueError, "results: expected a non-empty"),
    (lambda: viz.plot_policy_batches({"paged": 3}), TypeError, r"results\['paged'\]"),
    (lambda: viz.plot_fragmentation({}), ValueError, "breakdowns: expected a non-empty"),
    (lambda: viz.plot_fragmentation({"a": {"tokens": float("nan")}}), ValueError,
     r"breakdowns\['a'\]\['tokens'\]: expected a share"),
])
def test_the_simulator_charts_refuse_what_they_cannot_draw(no_new_figures, call, error, match):
    with pytest.raises(error, match=match):
        call()


# -- benchmark results ------------------------------------------------------------------------

def test_a_truncated_results_file_is_named(tmp_path):
    (tmp_path / "2026-01-01_X_bench.json").write_text('{"results": [')
    with pytest.raises(ValueError, match="2026-01-01_X_bench.json: not a readable bench JSON"):
        viz.load_bench_results(tmp_path)


@pytest.mark.parametrize("data, error, match", [
    ([{"kernel": "a", "ms": float("nan")}, {"kernel": "b", "ms": 1.0}], ValueError,
     r"data: row 0 \(a\): expected a positive finite time"),
    ([{"kernel": "a", "ms": "fast"}], ValueError, "data: row 0"),
    ([{"kernel": "a", "ms": -1.0}], ValueError, "data: row 0"),
    ("bench.json", TypeError, "data: expected a bench document"),
    (None, TypeError, "data: expected a bench document"),
    ([1, 2], TypeError, "data: row 0: expected a dict"),
    ([{"kernel": "a", "ms": 1.0}, {"kernel": "b", "ms": 1.0, "gbps": "fast"}], ValueError,
     r"data: row 1 \(b\): expected 'gbps' None or a finite number >= 0, got 'fast'"),
    ([{"kernel": "a", "ms": 1.0, "bytes": -4096}], ValueError, r"data: row 0 \(a\): .*'bytes'"),
    ([{"kernel": "a", "ms": 1.0, "tflops": float("nan")}], ValueError, r"row 0 \(a\): .*'tflops'"),
])
def test_bench_bars_refuse_bad_rows_by_index(no_new_figures, data, error, match):
    with pytest.raises(error, match=match):
        viz.plot_bench_bars(data)


@pytest.mark.parametrize("scores, values, match", [
    ([1.0, float("nan")], None, r"scores: .*scores\[1\] is nan"),
    ([float("inf"), 1.0], None, r"scores\[0\] is inf"),
    ([float("-inf"), 1.0], None, r"scores\[0\] is -inf"),
    ([1.0, 2.0], [1.0, float("nan")], "values: expected finite"),
])
def test_online_softmax_refuses_nan_instead_of_drawing_nothing(scores, values, match):
    with pytest.raises(ValueError, match=match):
        viz.online_softmax_trace(scores, values)


@pytest.mark.parametrize("states, indices, error, match", [
    (lambda s: [s, PageMapState(6, 4)], None, ValueError,
     r"states\[1\]: has 6 pages where states\[0\] has 4"),
    (lambda s: [s, "not a state"], None, TypeError, r"states\[1\]: expected a PagedKVCache"),
    (lambda s: [s], [1], ValueError, r"indices\[0\]: expected a state index in \[0, 1\), got 1"),
    (lambda s: [s], [-1], ValueError, r"indices\[0\]: .* got -1"),
    (lambda s: [s], [True], ValueError, r"indices\[0\]"),
    # one state or one index where a list goes raised "object is not iterable"
    (lambda s: s, None, TypeError, r"^states: expected a list of states .*plot_page_map.*got "
                                   r"PageMapState"),
    (lambda s: [s], 0, TypeError, r"^indices: expected a list of state indices, got int"),
    (lambda s: [s], np.array(0), TypeError, r"^indices: .* got ndarray"),
    (lambda s: [], [0], ValueError, r"^states: nothing to draw \(no states\)"),
    (lambda s: [s], [], ValueError, r"^indices: nothing to draw"),
])
def test_plot_states_names_the_state_or_index_it_cannot_draw(no_new_figures, states, indices,
                                                            error, match):
    state = replay([("add", "A", 5)], 4, 4)[-1]
    with pytest.raises(error, match=match):
        viz.plot_states(states(state), indices)


def test_plot_states_takes_numpy_indices_and_a_generator(no_new_figures):
    states = replay([("add", "A", 5), ("add", "B", 2)], 4, 4)
    fig = viz.plot_states(iter(states), np.array([0, 2]))
    assert [ax.get_title().split(":")[0] for ax in fig.axes[:2]] == ["0", "2"]
    plt.close(fig)


def test_color_map_takes_a_cache_as_the_other_entry_points_do():
    """A cache raised AttributeError ('PagedKVCache' object has no attribute 'tables')."""
    cache = PagedKVCache(4, 4, num_kv_heads=1, head_dim=1, device="cpu")
    seq = cache.add_sequence()
    assert viz.color_map(cache) == {seq: viz.seq_color(seq)}
    with pytest.raises(TypeError, match=r"^state: expected a PagedKVCache"):
        viz.color_map({"A": [0]})


def test_a_page_map_of_something_else_names_its_argument(no_new_figures):
    with pytest.raises(TypeError, match="obj: expected a PagedKVCache, a PageMapState"):
        viz.plot_page_map([[0, 1]])


@pytest.mark.parametrize("record, error, match", [
    ({}, ValueError, r"record: has no 'kernel' or 'time_ms'"),
    ({"kernel": "k"}, ValueError, r"record: has no 'time_ms' \(keys: \['kernel'\]\)"),
    ({"kernel": "k", "time_ms": 0.0}, ValueError, r"record\['time_ms'\]: expected a positive"),
    ({"kernel": "k", "time_ms": "1"}, ValueError, r"record\['time_ms'\]"),
    ("k: 1 ms", TypeError, "record: expected a dict"),
    ({"kernel": "k", "time_ms": 1.0, "bytes": "4096"}, ValueError, r"record\['bytes'\]: expected"),
    ({"kernel": "k", "time_ms": 1.0, "flops": float("nan")}, ValueError, r"record\['flops'\]"),
])
def test_record_line_names_what_a_record_lacks(record, error, match):
    with pytest.raises(error, match=match):
        viz.record_line(record)


def test_record_line_reads_a_record_from_records():
    data = [{"kernel": "k", "kind": "decode", "workload": "D64", "ms": 2.0, "gbps": 1000.0}]
    (record,) = viz.bench_plots.records(data)
    assert viz.record_line(record) == "k: D64: 2.000 ms, 1.00 TB/s"
