"""Lesson 13's bytes chart: with one GPU nothing crosses the wire, so that row has no wire bars
(it had a 17 MB "outputs" bar under the title "What crosses the wire", against the lesson's
"with R = 1 nothing is sent at all")."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pagedattn_lab.distributed import step_bytes  # noqa: E402
from pagedattn_lab.viz.tensor_parallel import plot_step_bytes  # noqa: E402


def test_one_gpu_row_has_no_wire_bars():
    lens = [37, 1, 16, 70, 33, 17]
    rows = [(f"{w} GPU", step_bytes(lens, 8, 4, 64, 16, w)) for w in (1, 2, 4)]
    fig = plot_step_bytes(rows)
    try:
        ax = fig.axes[0]
        bars = {c.get_label(): len(c.patches) for c in ax.containers}
        assert bars == {"block tables (broadcast)": 2, "outputs (all-gathered)": 2,
                        "K/V read locally, per GPU": 3}, bars
        assert [t.get_text() for t in ax.texts] == ["nothing\ncrosses"]
    finally:
        plt.close(fig)
