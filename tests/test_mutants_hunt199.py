"""Hunt 199: hand-made mutants of the newest modules that no test killed.

Each test names the mutants it kills. One defect was found on the way: shared_names did not
read `__shared__` spelled through a macro (`#define SH __shared__`), so a template's shared
array was taken for a writable global. All are pure Python: no kernel is compiled here (the
device-data ones read a symbol table that a monkeypatch stands in for).
"""
import pytest

from pagedattn_lab.page_bytes import page_bytes, pages_in

SIZES = dict(page_size=4, num_kv_heads=2, head_dim=64)   # fp16 pages of 2 KiB


# -- page_bytes, pages_in ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["num_kv_heads", "head_dim"])
def test_page_bytes_refuses_a_size_of_zero_by_name(name):
    """A page of no bytes made pages_in divide by zero (mutants: minimum=0 on num_kv_heads,
    on head_dim)."""
    with pytest.raises(ValueError, match=f"^{name}: expected an int >= 1, got 0"):
        page_bytes(**{**SIZES, name: 0})


@pytest.mark.parametrize("kv_dtype", [None, "int8"])
def test_page_bytes_refuses_an_unknown_scale_scheme_with_any_cache_format(kv_dtype):
    """(mutant: scale_scheme taken unchecked: "bogus" sized as static scales)"""
    with pytest.raises(ValueError, match=r"^scale_scheme: expected one of \('static', "):
        page_bytes(**SIZES, kv_dtype=kv_dtype, scale_scheme="bogus")


def test_no_memory_holds_no_pages_and_less_than_none_is_refused():
    """(mutant: memory_bytes refused below 1, where 0 bytes is a fair question)"""
    assert pages_in(0, **SIZES) == 0
    assert pages_in(2 * 2048 - 1, **SIZES) == 1
    with pytest.raises(ValueError, match="^memory_bytes: expected an int >= 0, got -1"):
        pages_in(-1, **SIZES)


# -- device_data.holds_writable_globals --------------------------------------------------------

TEMPLATE = ("template <int N> __global__ void k(float* o)\n"
            "{ __shared__ float tile[N]; static int count; o[0] = tile[count]; }\n")


@pytest.mark.parametrize("found, writable", [
    ((), False),
    ((("tile", 0x100, 64, True),), False),                 # the template's shared array only
    ((("tile", 0x100, 64, True), ("count", 0x200, 4, True)), True),   # and a static
    ((("tile", 0x100, 64, False),), True),   # a namespace-scope __device__ named like it
], ids=["none", "shared-array", "and-a-static", "global-named-like-shared"])
def test_holds_writable_globals_leaves_out_only_a_functions_shared_array(monkeypatch, found,
                                                                         writable):
    """(mutants: all() for any(); a name in a __shared__ declaration left out wherever it
    was declared; every function's static left out; no __shared__ names read)"""
    from pagedattn_lab.cpu import device_data   # noqa: PLC0415
    monkeypatch.setattr(device_data, "loadable_path", lambda path: path)
    monkeypatch.setattr(device_data, "kernel_variables", lambda path: (found, 0x8))
    monkeypatch.setattr(device_data, "unnamed_globals", lambda path: [])
    assert device_data.holds_writable_globals("lib.so", TEMPLATE) is writable


# -- cuda_text.reaching, macro_aliases ---------------------------------------------------------

@pytest.mark.timeout(30)
def test_reaching_follows_macros_that_name_each_other_once():
    """`#define A printf B` with `#define B A`: a cycle (mutant: a name reached again is
    queued again: the worklist never empties)."""
    from pagedattn_lab.cuda_text import reaching   # noqa: PLC0415
    assert reaching({"printf"}, {"A": {"printf", "B"}, "B": {"A"}, "C": {"D"}}) == {
        "printf", "A", "B"}


# -- prefill_masks.packed_batch ----------------------------------------------------------------

@pytest.mark.parametrize("qo_indptr, seq_lens, match", [
    ([0, 2], [2, 3], r"^seq_lens: expected 1 lengths \(one per sequence of qo_indptr\), got 2$"),
    ([0, 3, 6], [1, 2], r"^seq_lens\[0\]: expected at least q_len = 3 \(the new tokens are the "
                        r"sequence's last\), got 1$"),
], ids=["lengths-long", "two-short"])
def test_packed_batch_refuses_extra_lengths_and_names_the_first_short_one(qo_indptr, seq_lens,
                                                                          match):
    """(mutants: only fewer lengths than sequences refused; the last short sequence named)"""
    from pagedattn_lab.prefill_masks import packed_batch   # noqa: PLC0415
    with pytest.raises(ValueError, match=match):
        packed_batch(qo_indptr, seq_lens)


# -- constant_decl.constant_once ---------------------------------------------------------------

def _constant_once(source, options=()):
    from pagedattn_lab.cpu.constant_decl import constant_once   # noqa: PLC0415
    return constant_once(source, options)


def test_an_indented_define_is_a_directive_too():
    """The macro's own line is left as it is; its use says const (mutant: a directive only
    where `#` starts the line: the #define's name and body were blanked too)."""
    source = "  #define CMEM __constant__\nCMEM const float t[2] = {1, 2};\n"
    assert _constant_once(source) == source.replace("\nCMEM", "\n    ")


def test_a_pointer_in_a_directives_body_is_left_to_its_uses():
    """(mutant: the pointer rewrite applied in a directive too: it read the declaration's
    bounds of no statement, an UnboundLocalError)"""
    source = "#define CP __constant__ float *p\n"
    assert _constant_once(source) == source


def test_a_macro_for_constant_and_more_is_no_alias_of_it():
    """`#define CC __constant__ const` stands for two words: its const is the directive's own
    (blanked there), and a pointer declared with it keeps a const pointee, as under NVRTC
    (mutants: a body that starts with the word taken; whole=False)."""
    source = "#define CC __constant__ const\nCC float *p;\n"
    assert _constant_once(source) == "#define CC /*constant*/ const\nCC float *p;\n"


# -- viz.tile_counts ---------------------------------------------------------------------------

@pytest.mark.parametrize("sizes, name", [((0, 64, 32), "seq_len"), ((200, 0, 32), "tile_q"),
                                         ((200, 64, 0), "tile_k")])
def test_tile_counts_refuses_a_size_of_zero_by_name(sizes, name):
    """(mutant: tile_k >= 0 taken: a ZeroDivisionError naming nothing)"""
    from pagedattn_lab.viz.kernel_maps import tile_counts   # noqa: PLC0415
    with pytest.raises(ValueError, match=f"^{name}: expected an int >= 1, got 0"):
        tile_counts(*sizes)


# -- the engine's admit ------------------------------------------------------------------------

def _cached_twin():
    """A manager of 2-token pages whose pool caches [1, 2, 3, 4, 5]'s two full blocks, and a
    new request for that prompt, with what cached_prefix gives it."""
    from pagedattn_lab.engine.kv_manager import KVCacheManager   # noqa: PLC0415
    from pagedattn_lab.engine.request import Request, SamplingParams   # noqa: PLC0415
    from tests.test_advanced_grid_hunt183 import admitted   # noqa: PLC0415
    kv = KVCacheManager(8, 2)
    first = admitted(kv, 0, [1, 2, 3, 4, 5])
    pages = first.pages[:2]
    kv.free(first)
    req = Request(1, [1, 2, 3, 4, 5], SamplingParams())
    assert kv.cached_prefix(req) == (pages, 4)
    return kv, req, pages


@pytest.mark.parametrize("hits, computed, match", [
    ("pages", 5, r"^computed: expected 0\.\.4 \(request 1 has 5 tokens, the last always "
                 r"computed\), got 5$"),
    ("none", 4, r"^hits: expected 2 page\(s\) holding the 4 computed token\(s\), got \[\]"),
], ids=["every-token", "hits-missing"])
def test_admit_refuses_every_token_computed_and_too_few_hits(hits, computed, match):
    """(mutants: computed == num_tokens taken; the hits' count against computed not checked:
    no pages for 4 computed tokens)"""
    kv, req, pages = _cached_twin()
    ref_cnt = list(kv.pool.ref_cnt)
    with pytest.raises(ValueError, match=match):
        kv.admit(req, pages if hits == "pages" else [], computed, 1)
    assert kv.pool.ref_cnt == ref_cnt and req.pages == [] and req.num_computed_tokens == 0


# -- grading.judge.graders_device --------------------------------------------------------------

def test_graders_device_passes_on_the_arguments_of_a_check_without_a_signature():
    """inspect.signature raises ValueError for a builtin (mutant: only TypeError caught)"""
    from pagedattn_lab.grading import judge   # noqa: PLC0415
    assert judge.graders_device(min, [1, 2], {"device": "cpu"}) == ([1, 2], {"device": "cpu"})


# -- device_data.shared_names ------------------------------------------------------------------

SHARED_BY_MACRO = ("#define SH __shared__\ntemplate <int N> __global__ void k(float* o)\n"
                   "{ static int count; SH float t[N]; o[count++] = t[0]; }\n")


def test_shared_names_stop_at_a_brace():
    """The directive's `__shared__` has no `;` after it: the words up to the function's body
    are taken, not its statics (mutant: read on to the next `;`: `count` was taken for the
    template's shared array, its launch on several workers)."""
    from pagedattn_lab.cpu.device_data import shared_names   # noqa: PLC0415
    assert "count" not in shared_names(SHARED_BY_MACRO)


def test_shared_names_follow_a_macro_that_stands_for_shared():
    """Found: `SH float t[N]` with `#define SH __shared__` was not read, so a template's
    shared array `t` (a function's static under GCC) was taken for a writable global: the
    launch ran in one worker and variable_ranges counted t as global memory."""
    from pagedattn_lab.cpu.device_data import shared_names   # noqa: PLC0415
    assert "t" in shared_names(SHARED_BY_MACRO)
    assert "t" in shared_names("#define S2 __shared__\n#define SH S2\nvoid f() { SH int t; }")


# -- words.counted, cuda_text.collect_defines --------------------------------------------------

def test_counted_is_singular_for_one_only():
    """(mutant: `n <= 1`: "0 page")"""
    from pagedattn_lab.words import counted   # noqa: PLC0415
    assert [counted(n, "page") for n in (0, 1, 2)] == ["0 pages", "1 page", "2 pages"]


def test_a_define_option_without_its_macro_defines_nothing():
    """A trailing `-D` (the compiler refuses it; the source's readers ignore it) (mutant:
    the next option read past the list's end, an IndexError)."""
    from pagedattn_lab.cuda_text import collect_defines   # noqa: PLC0415
    assert collect_defines("", ["--define-macro", "LOG=printf", "-D"]) == {"LOG": "printf"}
