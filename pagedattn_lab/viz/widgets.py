"""Interactive views (ipywidgets): the address-translation explorer and the allocation stepper.

Both draw with the same functions the static pictures use (`plot_translation`,
`plot_page_map`). They work headless too: `update()` redraws into `.figure` and sets
`.info`, which is what the tests check.

Displayed (the last line of a cell, or `display(...)`), each offers the front end three
forms of itself: the live widget, a PNG of the picture it shows at that moment, and a line
of text. A live notebook shows the widget. Where widgets cannot be drawn (a notebook opened
fresh from a clone is "untrusted", and JupyterLab then renders only safe outputs such as
images; also GitHub and nbconvert's HTML), the committed notebook shows the picture instead
of `VBox(children=...)`.
"""
from __future__ import annotations

import base64
import html
import io

import ipywidgets as widgets
import matplotlib.pyplot as plt

from ..validate import check_int
from .page_table import plot_page_map
from .state import as_state, replay
from .translation import describe_translation, plot_translation, translation_of


def _in_ipython() -> bool:
    try:
        from IPython import get_ipython  # noqa: PLC0415
    except ImportError:
        return False
    return get_ipython() is not None


class _FigureView:
    """An Output widget that shows one matplotlib figure at a time."""

    def __init__(self):
        self.out = widgets.Output()
        self.figure = None

    def show(self, fig) -> None:
        if self.figure is not None:
            plt.close(self.figure)
        self.figure = fig
        if _in_ipython():
            from IPython.display import display  # noqa: PLC0415
            with self.out:
                self.out.clear_output(wait=True)
                display(fig)
        plt.close(fig)  # shown through the Output widget only, never twice


def _png_base64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


class _Displayable:
    """How the widgets display: the widget view, a PNG of `.figure` and a line of text (what
    to do, then `.info`) in one bundle. Subclasses set `.widget`, `.figure`, `.info`, HOW."""

    HOW = ""

    def _repr_mimebundle_(self, **kwargs):
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["image/png"] = _png_base64(self.figure)
        bundle["text/plain"] = f"{self.HOW}\n{self.info}"
        return bundle


class TranslationExplorer(_Displayable):
    """Pick a sequence and a token; see its virtual page, offset, physical page, slot and
    element offset, with the page cell highlighted.

    >>> TranslationExplorer(cache)   # the last line of a cell: shows the widget
    """

    HOW = "Translation explorer (interactive): run this cell to pick a sequence and a token."

    def __init__(self, cache, *, kv_head: int = 0, dim: int = 0, ncols: int | None = None):
        self.cache, self.kv_head, self.dim, self.ncols = cache, kv_head, dim, ncols
        state = as_state(cache, "cache")
        if not state.tables:
            raise ValueError("cache: has no live sequence to explore; add one first")
        seqs = list(state.tables)
        self.seq = widgets.Dropdown(options=seqs, value=seqs[0], description="sequence")
        self.token = widgets.IntSlider(value=0, min=0, max=max(state.lengths[seqs[0]] - 1, 0),
                                       description="token", continuous_update=False)
        self.text = widgets.HTML()
        self.view = _FigureView()
        self.seq.observe(self._on_seq, names="value")
        self.token.observe(lambda _: self.update(), names="value")
        self.widget = widgets.VBox([widgets.HBox([self.seq, self.token]), self.text, self.view.out])
        self.update()

    def _on_seq(self, _change) -> None:
        length = as_state(self.cache).lengths[self.seq.value]
        self.token.max = max(length - 1, 0)
        self.token.value = min(self.token.value, self.token.max)
        self.update()

    @property
    def figure(self):
        return self.view.figure

    def update(self) -> None:
        """Redraw for the current sequence and token."""
        t = translation_of(self.cache, self.seq.value, self.token.value, kv_head=self.kv_head,
                           dim=self.dim)
        self.translation = t
        cache = self.cache if hasattr(self.cache, "num_kv_heads") else self.cache.cache
        self.info = describe_translation(t, cache.page_size, cache.num_kv_heads, cache.head_dim,
                                         self.kv_head, self.dim)
        self.text.value = "<pre>" + html.escape(self.info) + "</pre>"
        self.view.show(plot_translation(self.cache, self.seq.value, self.token.value,
                                        kv_head=self.kv_head, dim=self.dim, ncols=self.ncols))


class AllocationStepper(_Displayable):
    """A slider over recorded allocation events (add / append / fork / free): step through
    them and watch the page map change.

    events: see `pagedattn_lab.viz.replay`; every state is computed up front.
    start: the event shown first (0: the empty cache).
    """

    HOW = "Allocation stepper (interactive): run this cell to step through the events."

    def __init__(self, events, num_pages: int, page_size: int, *, arrows: bool = False,
                 ncols: int | None = None, start: int = 0):
        self.events = list(events)
        self.states = replay(self.events, num_pages, page_size)
        self.arrows, self.ncols = arrows, ncols
        start = check_int(start, "start")   # 2.5 passed the range check, then ipywidgets failed
        if not 0 <= start <= len(self.events):
            raise ValueError(f"start: expected an event number in 0..{len(self.events)}, got {start}")
        self.slider = widgets.IntSlider(value=start, min=0, max=len(self.events),
                                        description="event", continuous_update=False)
        self.play = widgets.Play(value=start, min=0, max=len(self.events), interval=700)
        widgets.jslink((self.play, "value"), (self.slider, "value"))
        self.text = widgets.HTML()
        self.view = _FigureView()
        self.slider.observe(lambda _: self.update(), names="value")
        self.widget = widgets.VBox([widgets.HBox([self.play, self.slider]), self.text, self.view.out])
        self.update()

    @property
    def figure(self):
        return self.view.figure

    @property
    def state(self):
        return self.states[self.slider.value]

    def step(self, n: int = 1) -> None:
        """Move the slider by n events (clamped), as a click on the slider would."""
        self.slider.value = max(0, min(len(self.events), self.slider.value + n))

    def update(self) -> None:
        state = self.state
        self.info = (f"event {self.slider.value}/{len(self.events)}: {state.note} | "
                     f"{state.pages_in_use} pages used, {len(state.free_pages)} free")
        self.text.value = html.escape(self.info)
        self.view.show(plot_page_map(state, arrows=self.arrows, ncols=self.ncols,
                                     title=state.note))
