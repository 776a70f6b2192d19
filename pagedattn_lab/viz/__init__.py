"""Pictures and widgets for the course: page maps, memory over time, address translation,
online softmax, and benchmark charts.

Every plot function returns its matplotlib Figure (show it with `plt.show()`, save it, or
inspect it in a test) and works headless (the Agg backend). The two widgets
(`TranslationExplorer`, `AllocationStepper`) need ipywidgets and are loaded on first use.
"""
from .bench_plots import (head_to_head, latest_results, load_bench_results, plot_bench_bars,
                          plot_bench_file, record_line, recorded_figures, results_file,
                          results_file_or_newest, yardstick)
from .engine_plots import (PrefixSnapshot, plot_allocation_comparison, plot_engine_series,
                           plot_page_size_waste, plot_shared_blocks, prefix_snapshot)
from .kernel_maps import plot_causal_tiles, plot_query_mapping, tile_counts
from .l2_flush import flush_rows, load_flush_modes, plot_flush_cost
from .memory import (MemorySnapshot, plot_counter_allocator, plot_fragmentation,
                     plot_memory_timeline, plot_policy_batches, plot_sim_timeline, take_snapshot)
from .mha_choice import load_mha_choice, mha_choice_grid
from .page_table import color_map, page_cells, plot_page_map, plot_states, seq_color
from .quant_bench import load_quant_results, quant_rows
from .roofline import plot_roofline, roofline_points
from .softmax import online_softmax_trace, plot_online_softmax
from .state import PageMapState, as_state, demo_events, replay
from .translation import describe_translation, plot_translation, translation_of

_WIDGETS = ("AllocationStepper", "TranslationExplorer")


def __getattr__(name):
    # The widgets need ipywidgets; load them on first use so the plots work without it.
    if name in _WIDGETS:
        from . import widgets  # noqa: PLC0415
        return getattr(widgets, name)
    raise AttributeError(f"module 'pagedattn_lab.viz' has no attribute {name!r}")


__all__ = [
    "AllocationStepper", "as_state", "color_map", "demo_events", "describe_translation",
    "flush_rows", "head_to_head", "latest_results", "load_bench_results", "load_flush_modes",
    "load_mha_choice", "load_quant_results", "MemorySnapshot", "mha_choice_grid",
    "online_softmax_trace", "page_cells", "PageMapState", "plot_allocation_comparison",
    "plot_bench_bars", "plot_bench_file", "plot_causal_tiles", "plot_counter_allocator",
    "plot_engine_series",
    "plot_flush_cost", "plot_fragmentation", "plot_memory_timeline", "plot_online_softmax",
    "plot_page_map", "plot_page_size_waste", "plot_policy_batches", "plot_query_mapping",
    "plot_roofline", "plot_shared_blocks", "plot_sim_timeline", "plot_states",
    "plot_translation", "prefix_snapshot", "PrefixSnapshot", "quant_rows", "record_line",
    "recorded_figures", "replay", "results_file", "results_file_or_newest", "roofline_points",
    "seq_color", "take_snapshot", "tile_counts", "translation_of", "TranslationExplorer",
    "yardstick",
]
