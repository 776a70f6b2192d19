"""Helpers of the visualisation tests: a small cache, and figures rendered to pixels."""
import io

import matplotlib.image as mpimg
import numpy as np

import pagedattn_lab as pl


def small_cache(rng, num_pages=20, page_size=4):
    """Three sequences of 7, 3 and 10 tokens, the middle one freed, the first forked."""
    cache = pl.PagedKVCache(num_pages, page_size, num_kv_heads=2, head_dim=8, device="cpu")
    for n in (7, 3, 10):
        s = cache.add_sequence()
        k = rng.standard_normal((n, 2, 8)).astype(np.float32)
        cache.append(s, k, k)
    cache.free_sequence(1)
    cache.fork_sequence(0)
    return cache


def render(fig) -> np.ndarray:
    """The figure as an RGB array, in the figure's own pixel grid."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    buf.seek(0)
    return mpimg.imread(buf)[..., :3]


def pixel_at(fig, ax, image, x, y):
    fig.canvas.draw()
    px, py = ax.transData.transform((x, y))
    return image[int(round(image.shape[0] - py)), int(round(px))]


def is_white(rgb) -> bool:
    return bool(np.all(rgb > 0.97))
