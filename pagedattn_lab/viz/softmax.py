"""Online softmax, step by step: the running max, the running sum, and the running output.

A kernel that walks a sequence's keys one at a time cannot see all the scores before it
starts summing. Online softmax keeps three numbers per query and fixes them up as it goes:

    m_j = max(m_{j-1}, s_j)                                  running max
    l_j = l_{j-1} * exp(m_{j-1} - m_j) + exp(s_j - m_j)      running sum of exp(s - m_j)
    o_j = o_{j-1} * exp(m_{j-1} - m_j) + exp(s_j - m_j) * v_j   running weighted sum of values

and returns o_n / l_n, which equals softmax(s) @ v exactly (up to rounding). Whenever the max
grows, everything summed so far is scaled down by exp(old max - new max).
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ..validate import real_values


def online_softmax_trace(scores, values=None) -> dict:
    """Run the recurrence above over `scores` (1-D) and `values` ([n] or [n, d]; default: 1s).

    Returns a dict of arrays, one entry per step j: "max", "sum", "rescale" (the factor
    exp(m_{j-1} - m_j) applied at step j), "output" (o_j / l_j, the answer if the sequence
    ended at j), and "exact" (softmax(scores) @ values, computed the ordinary way).
    """
    scores = real_values(scores, "scores", np.float64)   # not strings, complex, bool
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"scores: expected a non-empty 1-D array, got shape {scores.shape}")
    values = np.ones_like(scores) if values is None else real_values(values, "values", np.float64)
    if values.ndim not in (1, 2) or values.shape[0] != scores.size:
        raise ValueError(f"values: expected [{scores.size}] or [{scores.size}, d] (one row per "
                         f"score), got shape {values.shape}")
    # NaN or inf would flow through every running number (a leading -inf makes
    # exp(-inf - -inf) = NaN) and draw an empty plot, not an error
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise ValueError(f"scores: expected finite scores, but scores[{bad[0]}] is "
                         f"{scores[bad[0]]}")
    if not np.isfinite(values).all():
        raise ValueError("values: expected finite values, got NaN or inf")
    m, total, acc = -np.inf, 0.0, np.zeros(values.shape[1:])
    trace = {"max": [], "sum": [], "rescale": [], "output": []}
    for s, v in zip(scores, values):
        m_new = max(m, s)
        rescale = np.exp(m - m_new)  # exp(-inf) = 0 on the first step: nothing to rescale
        weight = np.exp(s - m_new)
        total = total * rescale + weight
        acc = acc * rescale + weight * v
        m = m_new
        trace["max"].append(m)
        trace["sum"].append(total)
        trace["rescale"].append(rescale)
        trace["output"].append(acc / total)
    result = {k: np.asarray(v) for k, v in trace.items()}
    weights = np.exp(scores - scores.max())
    result["exact"] = (weights / weights.sum()) @ values
    return result


def plot_online_softmax(scores, values=None, *, title: str | None = None):
    """Three panels over the key index: scores with the running max, the running sum (with
    rescaling steps marked), and the running output converging to the exact answer.
    `values` should be 1-D here (one number per key). Returns the Figure."""
    tr = online_softmax_trace(scores, values)   # first: it refuses what is no scores
    scores = np.asarray(scores, dtype=np.float64)
    j = np.arange(scores.size)
    fig, axes = plt.subplots(3, 1, figsize=(8, 6), sharex=True)
    ax = axes[0]
    ax.plot(j, scores, "o", ms=4, color="#888", label="score s_j = q.k_j * scale")
    ax.step(j, tr["max"], where="post", color="C3", lw=2, label="running max m_j")
    grew = np.flatnonzero(tr["rescale"][1:] < 1) + 1
    ax.plot(grew, tr["max"][grew], "v", color="C3", ms=7, label="max grows: rescale")
    ax.legend(fontsize=7, loc="best")
    ax.set_ylabel("score")
    ax = axes[1]
    ax.plot(j, tr["sum"], "-o", ms=3, color="C0", label="running sum l_j")
    for g in grew:
        ax.axvline(g, color="C3", lw=0.6, ls=":")
    ax.legend(fontsize=7)
    ax.set_ylabel("l_j")
    ax = axes[2]
    output = tr["output"] if tr["output"].ndim == 1 else tr["output"][:, 0]
    exact = tr["exact"] if np.ndim(tr["exact"]) == 0 else tr["exact"][0]
    ax.plot(j, output, "-o", ms=3, color="C2", label="o_j / l_j (answer so far)")
    ax.axhline(exact, color="black", ls="--", lw=1, label="softmax(s) @ v, computed at once")
    ax.legend(fontsize=7)
    ax.set_ylabel("output")
    ax.set_xlabel("key index j (the loop of one thread)")
    fig.suptitle(title or "Online softmax: one pass, no second look at the scores", fontsize=10)
    fig.tight_layout()
    return fig
