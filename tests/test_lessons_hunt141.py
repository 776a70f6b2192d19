"""Lessons 09-13's words and figures (hunt 141): lesson 13's head-split figure labels its page
ids and keeps them visible with one KV head per GPU; lesson 09's chart titles give a readable
date, not a raw timestamp; workbook 12's targeted schedule_step cases print what each targets
(every one printed "random batch")."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from pagedattn_lab.viz import bench_plots  # noqa: E402
from pagedattn_lab.viz.tensor_parallel import plot_head_split  # noqa: E402
from tests.check_helpers import run_check  # noqa: E402
from tests.test_check_mistakes_engine import step_model  # noqa: E402


def _page_id_texts(ax, pages):
    return [t for t in ax.texts if t.get_text() in {str(p) for p in pages}]


@pytest.mark.parametrize("heads", [(8, 4), (4, 2), (8, 8)])
def test_head_split_labels_its_page_ids_and_no_box_covers_them(heads):
    pages = [2, 3, 34, 18, 1]
    fig = plot_head_split(*heads, 2, pages)
    try:
        for ax in fig.axes:
            assert any("page ids" in t.get_text() for t in ax.texts), [t.get_text()
                                                                       for t in ax.texts]
            ids = _page_id_texts(ax, pages)
            assert len(ids) == len(pages)
            for text in ids:   # (with one KV head per GPU its box was drawn over the ids)
                x, y = text.get_position()
                covering = [p for p in ax.patches if p.get_facecolor()[:3] != (1, 1, 1)
                            and p.get_x() <= x <= p.get_x() + p.get_width()
                            and p.get_y() <= y <= p.get_y() + p.get_height()]
                assert not covering, (text.get_text(), y, [(p.get_y(), p.get_height())
                                                           for p in covering])
    finally:
        plt.close(fig)


@pytest.mark.parametrize("date, shown", [
    ("2026-12-04T06:18:07+00:00", "NVIDIA H200, 2026-12-04 06:18 UTC"),
    ("2026-12-04T08:18:07+02:00", "NVIDIA H200, 2026-12-04 06:18 UTC"),
    ("2026-12-02", "NVIDIA H200, 2026-12-02"),
    ("not a date", "NVIDIA H200, not a date"),
])
def test_describe_gives_the_gpu_and_a_readable_date(date, shown):
    assert bench_plots.describe({"gpu": "NVIDIA H200", "date": date}) == shown


def test_lesson_09_second_chart_title_has_no_raw_timestamp():
    final = bench_plots.results_file_or_newest("2026-12-04_H200_session13_bench.json",
                                               workload="D64-gqa4")
    text = bench_plots.describe(final)
    assert "T06:18:07" not in text and "+00:00" not in text, text
    assert "H200" in text and "2026-12-04" in text, text


def test_schedule_step_cases_print_what_they_target():
    from pagedattn_lab.grading.checks_engine_step import TARGETS  # noqa: PLC0415
    result, printed = run_check("schedule_step", step_model())
    assert result.status == "passed", printed
    named = [c.name for c in result.cases[:-1]]
    assert "random batch" not in named, named
    assert all(name.startswith("targets ") for name in named), named
    assert {name.removeprefix("targets ").removesuffix(", running requests alone over it")
            for name in named} == set(TARGETS.values())
    assert result.cases[-1].name == "300 random batches, sizes drawn too"


def test_a_failed_targeted_case_names_its_rule():
    result, printed = run_check("schedule_step", step_model(fcfs=False))
    assert result.status == "failed", printed
    assert "targets first come, first served" in printed, printed


def _markdown(lesson: str) -> list[str]:
    import json  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415
    path = next((Path(__file__).resolve().parents[1] / "notebooks").glob(f"{lesson}_*.ipynb"))
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"]
            if c["cell_type"] == "markdown"]


@pytest.mark.parametrize("term, definition", [
    ("DLPack", "a standard way for two array libraries to share one array's memory"),
    ("NVLink multicast", "the switch itself can copy and add a collective's data"),
    ("Megatron-LM", "NVIDIA's library for training transformers split over many GPUs"),
    ("NVLink", "NVIDIA's direct GPU-to-GPU connection"),
    ("reduce-scatter", "each rank holds the sum of one 1/R piece"),
])
def test_lesson_13_defines_each_term_where_it_first_uses_it(term, definition):
    first = next(text for text in _markdown("13") if term in text)
    assert definition in " ".join(first.split()), (term, first[:300])


def test_lesson_13_names_row_parallel_only_after_defining_it():
    texts = _markdown("13")
    first_use = next(i for i, text in enumerate(texts) if "row-parallel" in text)
    assert "(row-parallel)" in texts[first_use], texts[first_use][:300]


@pytest.mark.parametrize("lesson, stated", [
    ("12", "each took 2 to 15 s in our runs"),
    ("13", "the cell took 10-15 s in our runs with other programs sharing the cores"),
])
def test_lessons_12_and_13_give_their_run_times_as_measured_ranges(lesson, stated):
    assert any(stated in " ".join(text.split()) for text in _markdown(lesson))


@pytest.mark.parametrize("lesson, term, definition", [
    ("10", "sm_90", "names a GPU generation by its compute capability"),
    ("12", "PCIe", "the link between the host's memory and the GPU"),
])
def test_lessons_10_and_12_define_a_term_where_they_first_use_it(lesson, term, definition):
    first = next(text for text in _markdown(lesson) if term in text)
    assert definition in " ".join(first.split()), (term, first[:300])


def test_describe_shows_a_timestamp_without_a_zone_to_the_minute_adding_none():
    assert bench_plots.describe({"device": "cpu", "date": "2026-12-04T06:18:07"}) == \
        "cpu, 2026-12-04 06:18"
