"""Hunt 149: mutation testing of hunts 140-146's new code. Each test here catches a small
mutation (named in its docstring) that every earlier test let through; each passes on the
real code."""
import signal
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from pagedattn_lab import BatchDecodeWrapper, paged_attention_decode, quant
from pagedattn_lab.cpu import abi
from pagedattn_lab.cpu.report import LaunchInfo
from pagedattn_lab.cpu.report_checks import pointer_error
from pagedattn_lab.engine.sampling import filtered_weights
from pagedattn_lab.grading import own_watch
from pagedattn_lab.grading.remote_errors import ErrorTranslation
from pagedattn_lab.grading.source_macros import device_conditional
from pagedattn_lab.grading.submissions import find_notebooks
from pagedattn_lab.viz import bench_plots

# -- sampling ---------------------------------------------------------------------------------


def test_a_top_p_the_rounded_running_sum_never_reaches_keeps_every_token():
    """Mutant: the clamp `min(..., desc.size - 1)` dropped: these probabilities sum to
    1 - 2^-52 in float64, short of top_p = 1 - 2^-53, so the cut's index was one past the
    end (IndexError)."""
    z = np.random.default_rng(48).standard_normal(7)
    top_p = float(np.nextafter(1.0, 0.0))
    probs = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    assert np.cumsum(np.sort(probs)[::-1])[-1] < top_p   # the case this test is about
    w = filtered_weights(z, 0, top_p)
    assert np.count_nonzero(w) == z.size
    np.testing.assert_allclose(w / w.sum(), probs, rtol=1e-15)


# -- the simt plan's int32 token range --------------------------------------------------------

PAGE = 2**19
WIDE_ROWS = np.zeros((2, 4096), np.int32)   # page 0 over and over: 2^31 slots, a small cache


def test_the_token_range_check_names_the_longest_sequence_wherever_it_is():
    """Mutant: `b = 0` instead of the longest sequence: a batch whose long sequence is not
    the first was planned, its partition ends wrapping in int32."""
    w = BatchDecodeWrapper()
    lens = np.array([5, 2**31 - 1], np.int32)
    with pytest.raises(ValueError, match=r"^seq_lens\[1\]: 2147483647 tokens in partitions "
                                         r"of 512: the simt kernel counts"):
        w.plan(WIDE_ROWS, lens, 2, 1, 16, PAGE, "float16", kernel="simt")
    assert w.kernel is None


@pytest.mark.parametrize("length, num_splits, most", [
    (2**31 - 1, None, 2**31 - 2048),          # the load step's margin
    (1_500_000_000, 2, 2**31 - 750_000_000),  # the partition's length
])
def test_the_token_range_refusal_gives_the_longest_length_it_would_take(length, num_splits,
                                                                        most):
    """Mutant: the hint's bound one off (`INT32_MAX - reach`): the refusal says how many
    tokens the partitions can count, and that many are taken (test_outsider_grid_hunt145's
    test_simt_plan_takes_the_longest_lengths_it_can_count for the first)."""
    with pytest.raises(ValueError, match=rf"\(at most {most} tokens[ )]"):
        BatchDecodeWrapper().plan(WIDE_ROWS[:1], np.array([length], np.int32), 2, 1, 16, PAGE,
                                  "float16", kernel="simt", num_splits=num_splits)


# -- messages ---------------------------------------------------------------------------------

def test_a_numpy_bool_for_an_array_is_said_to_be_a_numpy_scalar():
    """Mutant: type_label testing np.number instead of np.generic: np.bool_ is a NumPy
    scalar but no number, and was named as a bare "bool"."""
    rng = np.random.default_rng(149)
    k = rng.standard_normal((4, 3, 1, 8)).astype(np.float16)
    q = rng.standard_normal((1, 2, 8)).astype(np.float16)
    with pytest.raises(TypeError, match=r"^seq_lens: expected a NumPy or CuPy array.*, got "
                                        r"bool \(a NumPy scalar, not an array\)$"):
        paged_attention_decode(q, k, k.copy(), np.array([[2, 0]], np.int32), np.bool_(True))


def test_one_number_for_the_engines_layer_by_head_scales_is_not_told_per_kv_head():
    """Mutant: refuse_single_number without its `len(shape) != 1` guard: the engine's static
    scales are [layers, heads], and one number there was told "one static scale per KV head"
    with an np.full of that 2-D shape."""
    with pytest.raises(TypeError, match=r"^kv_scales\[0\]: expected float32 scales, got a "
                                        r"float \(float64\)") as err:
        quant.check_scale(0.5, "kv_scales[0]", (2, 3), 127.0)
    assert "per KV head" not in str(err.value)


@pytest.mark.parametrize("flag", [True, np.bool_(True)])
def test_a_bool_scale_is_refused_as_a_bool_not_as_a_single_number(flag):
    """Mutant: refuse_single_number's kinds "fiub": True was told as "the single number
    1.0", with an np.full of it as the fix."""
    with pytest.raises(TypeError, match=r"^scale: expected real numbers \(a float or int "
                                        r"dtype\), got bool$"):
        quant.quantize(np.ones((3, 2, 32), np.float32), "int8", flag)


@pytest.mark.parametrize("on_gpu, library", [(True, "cp"), (False, "np")])
def test_a_runs_single_scale_hint_uses_the_array_library_of_the_run(on_gpu, library):
    """Mutant: the hint always "np": a GPU run's scales must be CuPy arrays, and np.full's
    would then be refused as on the wrong device. (Refused before any CuPy call.)"""
    with pytest.raises(ValueError, match=rf"^k_scale: expected one static scale per KV head, "
                                         rf"shape \(2,\), got the single number 0.5; the same "
                                         rf"scale for every head is {library}\.full\(\(2,\), "
                                         rf"0.5, {library}\.float32\)$"):
        quant.check_run_scales(quant.kv_format("int8"), "static", (4, 16, 2, 32), 0.5,
                               np.ones(2, np.float32), on_gpu)


# -- the grader's macro lint --------------------------------------------------------------------

def test_macros_that_name_each_other_end_the_lint():
    """Mutant: `_foreign` without its `seen` set: two macros naming each other looped
    forever (a grading run that never ends)."""
    source = "#define A B\n#define B (A + 1)\n#if A\n#endif\n__global__ void k() {}\n"
    previous = signal.signal(signal.SIGALRM, lambda *_: pytest.fail("the lint did not end"))
    signal.alarm(10)
    try:
        assert device_conditional(source) is None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_a_comment_on_a_conditionals_line_is_no_macro():
    """Mutant: the source's comments not stripped: the words of `// on every GPU` were
    read as macros the source does not define."""
    source = ("#define TILE 4\n#if TILE == 4   // on every GPU\n#endif\n"
              "/* #ifdef __CUDA_ARCH__ */\n__global__ void k() {}\n")
    assert device_conditional(source) is None


# -- the judge's heap -----------------------------------------------------------------------------

def test_a_limit_over_the_hard_limit_takes_the_hard_limit():
    """Mutant: the soft limit always `mb << 20`: over a hard limit already lower (a
    container's), setrlimit raised ValueError and the judge never started."""
    code = ("import resource; from pagedattn_lab.grading.judge import limit_memory; "
            "resource.setrlimit(resource.RLIMIT_DATA, (4 << 30, 4 << 30)); "
            "limit_memory(8192); print(resource.getrlimit(resource.RLIMIT_DATA))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == str((4 << 30, 4 << 30))


# -- the submissions folder -----------------------------------------------------------------------

def test_a_folder_without_a_notebook_is_refused_by_name(tmp_path):
    """Mutant: the empty-folder refusal dropped: a folder holding no notebook gave an empty
    table, read as "graded, nothing failed"."""
    (tmp_path / "notes.txt").write_text("my answers")
    with pytest.raises(FileNotFoundError, match=r"no \*\.ipynb notebook in this folder$"):
        find_notebooks([tmp_path])


def test_a_mac_zips_copies_are_no_submissions(tmp_path):
    """Mutant: `__MACOSX` not skipped: nothing in a Mac zip's folder of resource forks is a
    submission, a name without the leading dot included (the `._` copies are hidden files,
    skipped by the hidden-file rule on their own)."""
    (tmp_path / "01_page_table.ipynb").write_text("{}")
    (tmp_path / "__MACOSX").mkdir()
    for name in ("._01_page_table.ipynb", "01_page_table.ipynb"):
        (tmp_path / "__MACOSX" / name).write_bytes(b"\x00\x05\x16\x07")
    others = []
    assert find_notebooks([tmp_path], others) == [(tmp_path / "01_page_table.ipynb",
                                                   "01_page_table.ipynb")]
    assert others == []


def test_a_notebook_named_twice_keeps_its_first_name(tmp_path):
    """Mutant: the last naming kept: `grade a.ipynb folder/` showed the file under the
    folder's name, not as the command line first named it."""
    notebook = tmp_path / "01_page_table.ipynb"
    notebook.write_text("{}")
    assert find_notebooks([notebook, tmp_path]) == [(notebook, str(notebook))]


# -- the grader's error translation ------------------------------------------------------------

def _lookalike(*args, **kwargs):   # _trampoline's very code, in a learner's module
    return __pagedattn_lab_own_work_watch__("key", args, kwargs)  # noqa: F821


def test_a_learner_function_with_the_trampolines_code_is_no_trampoline():
    """Mutant: `trampoline` comparing the bytecode only: a learner's function of the same
    code (no tripwire of Watch's in its globals) was skipped as the grader's frame, and an
    error there was put at another line."""
    assert _lookalike.__code__.co_code == own_watch._TRAMPOLINE.co_code
    assert not own_watch.trampoline(_lookalike.__code__, globals())
    assert not own_watch.trampoline(_lookalike.__code__,
                                    {"__pagedattn_lab_own_work_watch__": print})


class _Peer(ErrorTranslation):
    strict = False


@pytest.mark.parametrize("exc, text", [
    (KeyError("seq 3"), "'seq 3'"),        # quoted once, as in the notebook
    (KeyError(3), "3"),                    # before: '3'
    (KeyError(-(2**63) + 1), str(-(2**63) + 1)),
])
def test_a_key_error_crosses_with_the_key_the_notebook_shows(exc, text):
    """The bug _message_of's mutants found: an int key crossed as text, quoted again ('3')."""
    peer = _peer()
    rebuilt = peer.exception(peer.describe(exc))
    assert type(rebuilt) is KeyError and rebuilt.args == exc.args
    assert str(rebuilt) == str(exc) == text


@pytest.mark.parametrize("exc, text", [
    (KeyError(), ""),                      # no key
    (KeyError("a", "b"), "('a', 'b')"),    # two: not the first alone
])
def test_a_key_error_without_one_key_is_sent_as_its_str(exc, text):
    """Mutant: _message_of taking args[0] of every KeyError: `raise KeyError()` crashed the
    translation (IndexError), and KeyError("a", "b") lost its second argument."""
    assert _peer().describe(exc)["message"] == str(exc) == text


def test_keys_that_cannot_cross_as_themselves_cross_as_their_str():
    """An int past 64 bits, or a tuple, is sent as the key's repr (rebuilt to read as that
    repr: test_grader_messages_hunt160), and the sandbox can send no int of a million digits
    (which str() refuses) nor an int message for another exception."""
    for exc in (KeyError(2**70), KeyError((1, 2))):
        assert _peer().describe(exc)["message"] == str(exc)
    peer = _peer()
    for info in ({"type": "KeyError", "mro": ["KeyError"], "message": 10**4000},
                 {"type": "ValueError", "mro": ["ValueError"], "message": 7}):
        rebuilt = peer.exception(info)
        assert isinstance(rebuilt.args[0], str), rebuilt.args


def _peer():
    peer = _Peer()
    peer.init_errors()
    return peer


class _RaisingIntKey:
    def __init__(self, dim):
        self.dim = dim

    def update(self, score, values):
        raise KeyError(3)   # a dict keyed by sequence id

    def result(self):
        return np.zeros(self.dim)


def test_a_key_error_of_an_int_key_reads_the_same_under_the_grader_as_in_the_notebook():
    """Found by the mutants of _message_of: `raise KeyError(3)` read "KeyError: 3" in the
    notebook and "KeyError: '3'" under the grader."""
    from tests.test_grade_attack_hunt144 import raised_in_notebook_and_judged  # noqa: PLC0415
    notebook, judged = raised_in_notebook_and_judged(_RaisingIntKey)
    assert notebook == judged == "KeyError: 3", (notebook, judged)


# -- what the grader and the figures print ----------------------------------------------------

def test_only_the_case_over_the_running_requests_says_so():
    """Mutant: the suffix ", running requests alone over it" dropped: the case whose budget
    the running requests use up alone read like the other "the step's token budget" ones."""
    from tests.check_helpers import run_check  # noqa: PLC0415
    from tests.test_check_mistakes_engine import step_model  # noqa: PLC0415
    result, printed = run_check("schedule_step", step_model())
    assert result.status == "passed", printed
    alone = [c.name for c in result.cases if c.name.endswith(", running requests alone over it")]
    assert alone == ["targets the step's token budget, running requests alone over it"]


def test_a_bench_document_without_a_date_says_so():
    """Mutant: a missing date shown as an empty string ("NVIDIA H200, ")."""
    assert bench_plots.describe({"gpu": "NVIDIA H200"}) == "NVIDIA H200, ?"


# -- the CPU executor's words for an access through a pointer past an array -----------------------
# (pointer_error on result records made here: test_cpu_gaps_hunt140 runs the kernels; these
# are the cases its kernels do not reach)
_SOURCE = "__global__ void k(int *x) {\n    int v = p[3 - i];\n    int w = p[i] + q[j];\n}\n"
_INFO = LaunchInfo("k", None, (1, 1, 1), (4, 1, 1), 0, 0, [], [], source=("lib", "k.cu", _SOURCE))


def _record(line, is_write=0, region=abi.REGION_STACK):
    """A failed object-size check's record: an int read at `line`, column 9 (the declared
    name, where GCC points a load)."""
    return SimpleNamespace(msg=b"'int'\tk.cu", offset=0, line=line, op=9, region=region,
                           is_write=is_write, block=(0, 0, 0), thread=(2, 0, 0), addr=0,
                           has_thread=True)


def test_an_int_read_through_a_pointer_is_an_int():
    """Mutant: the article always "a" ("a int")."""
    e = pointer_error(_record(2), _INFO)
    assert "out-of-bounds read of an int through `p[3 - i]` past the end of a local array " \
        "at line 2 (`int v = p[3 - i];`)" in str(e), str(e)
    assert (e.access, e.array, e.line) == ("read", "p[3 - i]", 2)


def test_a_load_on_a_line_of_two_indexing_expressions_names_neither():
    """Mutant: the first indexing expression taken whenever there is one: `p[i] + q[j]` was
    said to be read through `p[i]`, which GCC's record does not say."""
    e = pointer_error(_record(3), _INFO)
    assert e.array is None
    assert "read of an int through a pointer past the end of a local array at line 3 " \
        "(`int w = p[i] + q[j];`)" in str(e), str(e)


def test_an_access_that_is_neither_load_nor_store_is_not_said_to_overwrite():
    """Mutant: `overwrites` for any nonzero is_write: the -1 of another access kind (a member
    access, a reference bound) read as a write."""
    e = pointer_error(_record(2, is_write=-1), _INFO)
    assert e.access is None and "out-of-bounds access of an int" in str(e), str(e)
    assert "on a GPU it reads another variable" in str(e), str(e)


def test_a_pointer_outside_the_stacks_and_shared_memory_is_past_an_array():
    """Mutant: every region but static shared memory named "a local array": an address in
    neither the threads' stacks nor the shared section is not known to be one."""
    e = pointer_error(_record(2, region=abi.REGION_UNKNOWN), _INFO)
    assert "past the end of an array at line 2" in str(e), str(e)


def test_the_object_size_check_builds_only_learner_kernels_under_gcc():
    """Mutant: object-size on the package's own kernels too (`bounds=False`): it checks
    every access to an array of known size, the cost kernel_checks keeps off the lessons'
    trusted kernels (run under compute-sanitizer on the GPU); Clang's counterpart is a bare
    trap."""
    from pagedattn_lab.cpu.kernel_checks import kernel_flags  # noqa: PLC0415
    assert "-fsanitize=object-size" in kernel_flags(False)
    assert "-fsanitize=object-size" not in kernel_flags(False, bounds=False)
    assert "-fsanitize=object-size" not in kernel_flags(True)
    assert "-fno-weak" in kernel_flags(False, bounds=False) and \
        "-fno-weak" not in kernel_flags(True)
