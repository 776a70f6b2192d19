"""An answer that is the package's own finished answer fails its task (grading/own_work.py).

The package ships what the workbooks ask for (the float64 references, gather_kv_reference,
the kernels under pagedattn_lab/kernels); an answer that calls one, or compiles a string
read from a kernel file, passed every case. Each form below is a working answer of that
kind (it passed before); now the check fails it and names the name and the line. The
solutions still pass (tests/test_exercises.py runs them through the same checks).
"""
import importlib.util
import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pagedattn_lab import check
from pagedattn_lab.grading import remote
from pagedattn_lab.grading.channel import Channel
from pagedattn_lab.grading.judge import Judge

REPO = Path(__file__).resolve().parents[1]
EXPECTED = "expected your own implementation"

# gather_numpy's fn(k_cache, row, seq_len) through addressing.gather_kv_reference or
# gather.gather_kv; each form a cell a learner could write (name -> (source, what is named))
GATHER = {
    "attribute": ("import pagedattn_lab as pl\n"
                  "def answer(k, row, n):\n"
                  "    return pl.addressing.gather_kv_reference(k, k, row, n)[0]\n",
                  "line 3 of answer uses pagedattn_lab.addressing.gather_kv_reference"),
    "module alias": ("from pagedattn_lab import addressing as r\n"
                     "def answer(k, row, n):\n"
                     "    return r.gather_kv_reference(k, k, row, n)[0]\n",
                     "line 3 of answer uses pagedattn_lab.addressing.gather_kv_reference"),
    "name alias": ("from pagedattn_lab.addressing import gather_kv_reference as g\n"
                   "def answer(k, row, n):\n"
                   "    return g(k, k, row, n)[0]\n",
                   "line 3 of answer uses pagedattn_lab.addressing.gather_kv_reference"),
    "import inside": ("def answer(k, row, n):\n"
                      "    from pagedattn_lab import gather\n"
                      "    return gather.gather_kv(k, k, row, n)[0]\n",
                      "line 3 of answer uses pagedattn_lab.gather.gather_kv"),
    "getattr": ("from pagedattn_lab import addressing\n"
                "def answer(k, row, n):\n"
                "    return getattr(addressing, 'gather_kv_reference')(k, k, row, n)[0]\n",
                "line 3 of answer uses pagedattn_lab.addressing.gather_kv_reference"),
    "import_module": ("import importlib\n"
                      "def answer(k, row, n):\n"
                      "    gather = importlib.import_module('pagedattn_lab.gather').gather_kv\n"
                      "    return gather(k, k, row, n)[0]\n",
                      "line 3 of answer uses pagedattn_lab.gather.gather_kv"),
    "__import__": ("def answer(k, row, n):\n"
                   "    gather = __import__('pagedattn_lab.gather').gather.gather_kv\n"
                   "    return gather(k, k, row, n)[0]\n",
                   "line 2 of answer uses pagedattn_lab.gather.gather_kv"),
    # bound before the check by a name built at run time: the binding is read, not the text
    "global bound to a built name": ("import importlib\n"
                                     "g = getattr(importlib.import_module('pagedattn_' + "
                                     "'lab.gather'), 'gather_' + 'kv')\n"
                                     "def answer(k, row, n):\n"
                                     "    return g(k, k, row, n)[0]\n",
                                     "line 4 of answer uses pagedattn_lab.gather.gather_kv"),
    "default argument": ("import importlib\n"
                         "def answer(k, row, n, g=getattr(importlib.import_module("
                         "'pagedattn_' + 'lab.gather'), 'gather_' + 'kv')):\n"
                         "    return g(k, k, row, n)[0]\n",
                         "a default argument of answer is pagedattn_lab.gather.gather_kv"),
    # names built at run time: only the call shows them (own_work.Watch)
    "getattr of a built name": ("from pagedattn_lab import addressing\n"
                                "def answer(k, row, n):\n"
                                "    name = 'gather_kv' + '_reference'\n"
                                "    return getattr(addressing, name)(k, k, row, n)[0]\n",
                                "line 4 of answer called "
                                "pagedattn_lab.addressing.gather_kv_reference"),
    "import_module of a built name": ("import importlib\n"
                                      "def answer(k, row, n):\n"
                                      "    mod = importlib.import_module('pagedattn_' + "
                                      "'lab.gather')\n"
                                      "    return mod.gather_kv(k, k, row, n)[0]\n",
                                      "line 4 of answer called pagedattn_lab.gather.gather_kv"),
}

# attend_one's fn(q_vec, k_cache, v_cache, row, seq_len, t, kv_head, scale) through the
# float64 reference: the decode of one query over the keys up to t
ATTEND = ("import numpy as np\n"
          "import pagedattn_lab as pl\n"
          "def answer(q, k, v, row, n, t, kv_head, scale):\n"
          "    one = slice(kv_head, kv_head + 1)\n"
          "    k, v = np.ascontiguousarray(k[:, :, one]), np.ascontiguousarray(v[:, :, one])\n"
          "    return pl.reference_decode(np.asarray(q)[None, None], k, v,\n"
          "                               np.int32([row]), np.int32([t + 1]), scale)[0, 0]\n")


def _cell(tmp_path: Path, source: str, name: str = "cell"):
    """The learner's cell as a module with a file (as IPython's cells have: getsource works)."""
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("form", sorted(GATHER))
def test_gather_through_the_package_fails_gather_numpy(form, tmp_path, capsys):
    source, named = GATHER[form]
    result = check.gather_numpy(_cell(tmp_path, source).answer)
    assert result.status == "failed" and EXPECTED in result.summary, result.summary
    assert named in result.summary and "Hint:" in result.summary
    assert named in capsys.readouterr().out   # the learner sees it under the cell


def test_the_float64_reference_fails_attend_one(tmp_path):
    result = check.attend_one(_cell(tmp_path, ATTEND).answer)
    assert result.status == "failed", result.summary
    assert "line 6 of answer uses pagedattn_lab.reference.reference_decode" in result.summary


def test_the_package_allocator_itself_or_a_subclass_fails_allocator(tmp_path):
    from pagedattn_lab.paging import BlockAllocator
    assert "you passed pagedattn_lab.paging.BlockAllocator itself" in \
        check.allocator(BlockAllocator).summary
    mine = _cell(tmp_path, "from pagedattn_lab.paging import BlockAllocator\n"
                           "class Mine(BlockAllocator):\n"
                           "    pass\n").Mine
    summary = check.allocator(mine).summary
    assert EXPECTED in summary and "Mine inherits from pagedattn_lab.paging.BlockAllocator" \
        in summary


def test_the_graders_own_helper_fails_online_softmax(tmp_path):
    mine = _cell(tmp_path, "from pagedattn_lab.grading import checks_softmax as grader\n"
                           "class Mine:\n"
                           "    def __init__(self, head_dim):\n"
                           "        self.scores, self.values = [], []\n"
                           "    def update(self, score, value):\n"
                           "        self.scores.append(score)\n"
                           "        self.values.append(value)\n"
                           "    def result(self):\n"
                           "        return grader._softmax_average(self.scores, self.values)\n"
                 ).Mine
    summary = check.online_softmax(mine).summary
    assert "line 9 of result uses the grader's pagedattn_lab.grading.checks_softmax." \
        "_softmax_average" in summary, summary


LAMBDAS = {   # a lambda's source lines also hold the check call it is passed to
    "own": ("from pagedattn_lab import check\n"
            "result = check.pages_needed(lambda num_tokens, page_size:\n"
            "                            -(-num_tokens // page_size))\n", "passed"),
    "the package's": ("import pagedattn_lab as pl\n"
                      "from pagedattn_lab import check\n"
                      "result = check.gather_numpy(lambda k, row, n: "
                      "pl.gather.gather_kv(k, k, row, n)[0])\n", "failed"),
}


@pytest.mark.parametrize("whose", sorted(LAMBDAS))
def test_a_lambda_written_in_the_check_call_is_judged_by_its_own_code(tmp_path, whose):
    source, status = LAMBDAS[whose]
    assert _cell(tmp_path, source).result.status == status


def test_of_two_lambdas_with_the_same_parameters_on_a_line_each_is_judged_by_its_own(
        tmp_path):
    """The source lines of a lambda hold every lambda of its statement: the one judged is
    the one whose code it is, not the first with the same parameters."""
    module = _cell(tmp_path, "import pagedattn_lab as pl\n"
                             "theirs, mine = (lambda row, token, page_size: pl.physical_slot("
                             "row, token, page_size)), (lambda row, token, page_size: "
                             "int(row[token // page_size]) * page_size + token % page_size)\n")
    assert check.slot_of(module.mine).status == "passed"
    summary = check.slot_of(module.theirs).summary
    assert "line 2 of <lambda> uses pagedattn_lab.addressing.physical_slot" in summary, summary


# a function's own name for its helper shadows the package's name the notebook imported
# (lesson 10 imports work_list after its tile_work task; re-running the task's cell keeps it)
SHADOWS = {
    "nested def": ("from pagedattn_lab.addressing import translate\n"
                   "def answer(row, token, page_size):\n"
                   "    def translate(page):\n"
                   "        return int(row[page])\n"
                   "    return translate(token // page_size) * page_size + token % page_size\n"),
    "import of another module": ("from pagedattn_lab import translate\n"
                                 "def answer(row, token, page_size):\n"
                                 "    from math import floor as translate\n"
                                 "    page = int(row[translate(token / page_size)])\n"
                                 "    return page * page_size + token % page_size\n"),
    "except as": ("from pagedattn_lab import physical_slot\n"
                  "def answer(row, token, page_size):\n"
                  "    try:\n"
                  "        return int(row[token // page_size]) * page_size + token % page_size\n"
                  "    except IndexError as physical_slot:\n"
                  "        raise physical_slot\n"),
}


@pytest.mark.parametrize("how", sorted(SHADOWS))
def test_a_name_the_function_binds_itself_is_not_the_packages(tmp_path, how):
    result = check.slot_of(_cell(tmp_path, SHADOWS[how]).answer)
    assert result.status == "passed", result.summary


def test_a_decorated_answer_is_read_with_its_own_globals(tmp_path, monkeypatch):
    """A decorator from another module (`functools.wraps`): the answer's names are the
    cell's, not the decorator module's; what the answer wraps is still read."""
    monkeypatch.setitem(sys.modules, "deco", _cell(
        tmp_path, "import functools\n"
                  "from pagedattn_lab import physical_slot\n"
                  "def logged(f):\n"
                  "    @functools.wraps(f)\n"
                  "    def wrapper(*args):\n"
                  "        return f(*args)\n"
                  "    return wrapper\n", "deco"))
    module = _cell(tmp_path, "import pagedattn_lab as pl\n"
                             "from deco import logged\n"
                             "def physical_slot(row, token, page_size):\n"
                             "    return int(row[token // page_size]) * page_size + "
                             "token % page_size\n"
                             "@logged\n"
                             "def mine(row, token, page_size):\n"
                             "    return physical_slot(row, token, page_size)\n"
                             "@logged\n"
                             "def theirs(row, token, page_size):\n"
                             "    return pl.physical_slot(row, token, page_size)\n")
    assert check.slot_of(module.mine).status == "passed"
    summary = check.slot_of(module.theirs).summary
    assert "line 10 of theirs uses pagedattn_lab.addressing.physical_slot" in summary, summary


HINTED = textwrap.dedent("""
    import pagedattn_lab as pl
    class Mine:
        def __init__(self, num_pages: int):
            self.num_pages, self.pool, self.refs = num_pages, list(range(num_pages)), {}
        @property
        def num_free(self) -> int:
            return len(self.pool)
        def ref_count(self, page: int) -> int:
            return self.refs.get(page, 0)
        def same_pool(self, other: pl.BlockAllocator) -> bool:   # a hint, not a use
            return other.num_pages == self.num_pages
        def allocate(self, n: int) -> list[int]:
            if n > len(self.pool):
                raise pl.OutOfPagesError(n, len(self.pool), self.num_pages)
            pages, self.pool = self.pool[:n], self.pool[n:]
            self.refs.update(dict.fromkeys(pages, 1))
            return pages
        def free(self, pages) -> None:
            pages = list(pages)
            for page in pages:
                if not 0 <= page < self.num_pages:
                    raise ValueError(f"page {page} is not in this pool")
                if self.ref_count(page) < pages.count(page):
                    raise ValueError(f"page {page} is already free (double free?)")
            for page in pages:
                self.refs[page] -= 1
                if self.refs[page] == 0:
                    self.pool.append(page)
    """)


def test_a_type_hint_naming_the_packages_class_is_not_a_use(tmp_path):
    result = check.allocator(_cell(tmp_path, HINTED).Mine)
    assert result.status == "passed", result.summary


def test_an_own_answer_using_the_packages_helpers_passes(tmp_path):
    """The package's names that are not the task's answer stay allowed (and a local name
    that shadows a global of the package's is the function's own)."""
    source = ("import numpy as np\n"
              "import pagedattn_lab as pl\n"
              "from pagedattn_lab.grading.report import CheckResult as _\n"
              "def answer(k, row, n):\n"
              "    _ = np.arange(n)\n"
              "    size = k.shape[1]\n"
              "    slots = np.asarray(row, dtype=np.int64)[_ // size] * size + _ % size\n"
              "    return k.reshape(-1, *k.shape[2:])[slots]\n")
    assert check.gather_numpy(_cell(tmp_path, source).answer).status == "passed"


def _naive_copied(how: str) -> str:
    """A prefill_naive whose work is the package's kernel file, read one way or another."""
    path = REPO / "pagedattn_lab" / "kernels" / "prefill_naive.cu"
    text = {"open": lambda: open(path).read(), "Path": path.read_text,
            "resources": lambda: __import__("importlib.resources").resources.files(
                "pagedattn_lab.kernels").joinpath("prefill_naive.cu").read_text(),
            "include": lambda: f'#include "{path}"\n'}[how]()
    return text + textwrap.dedent("""
        extern "C" __global__ void prefill_naive(
            const float* q, const float* k_cache, const float* v_cache,
            const int* block_tables, const int* seq_lens, float* out, int max_len,
            int num_heads, int num_kv_heads, int head_dim, int page_size, int max_pages,
            float scale)
        {
            naive_prefill<float>(q, k_cache, v_cache, block_tables, seq_lens, out, max_len,
                                 num_heads, num_kv_heads, head_dim, page_size, max_pages,
                                 scale);
        }
        """)


@pytest.mark.parametrize("how", ["open", "Path", "resources"])
def test_a_kernel_read_from_the_package_fails_naive_kernel(how):
    summary = check.naive_kernel(_naive_copied(how), device="cpu").summary
    assert EXPECTED in summary, summary
    assert "holds the code of pagedattn_lab/kernels/prefill_naive.cu line" in summary


def test_a_kernel_including_the_package_file_fails_naive_kernel():
    summary = check.naive_kernel(_naive_copied("include"), device="cpu").summary
    assert "#includes the package's kernel file" in summary and "prefill_naive.cu" in summary, \
        summary


def test_an_include_in_a_comment_is_no_include():
    """A line taken out (`// #include ...`) or prose in a comment includes nothing; the
    kernel is the learner's own."""
    path = REPO / "pagedattn_lab" / "kernels" / "prefill_naive.cu"
    cells = json.loads((REPO / "solutions" / "04_naive_kernel.ipynb").read_text())["cells"]
    cell = next("".join(c["source"]) for c in cells if "SOURCE_NAIVE = " in "".join(c["source"]))
    kernel = cell.split('r"""', 1)[1].split('"""', 1)[0]   # the solution's own kernel
    commented = f'// #include "{path}"\n/* the package would #include "common.cuh" */\n' + kernel
    result = check.naive_kernel(commented, device="cpu")
    assert result.status == "passed", result.summary


# -- under the grader: the learner's objects in a sandbox process, the check in the judge --
LEARNER = """
import sys
from pagedattn_lab.grading import runner
peer = runner.learner_peer(int(sys.argv[1]))
peer.idle_timeout = 60
sys.path.insert(0, sys.argv[2])
import cells
runner.forwarder(peer, "gather_numpy")(cells.plain)
runner.forwarder(peer, "slot_of")(cells.built)
runner.forwarder(peer, "kv_offset")(cells.own)
runner.forwarder(peer, "naive_kernel")(cells.KERNEL)
"""
CELLS = """
import pagedattn_lab as pl
from pagedattn_lab import addressing

def plain(k, row, n):
    return pl.addressing.gather_kv_reference(k, k, row, n)[0]

def built(row, token, page_size):
    return getattr(addressing, "physical" + "_slot")(row, token, page_size)

def own(slot, kv_head, dim, num_kv_heads, head_dim):
    return (slot * num_kv_heads + kv_head) * head_dim + dim
"""


def judged(learner_code: str, argument: str, tasks: list[str]) -> dict:
    """The judge's verdicts on `tasks` for a learner process running `learner_code` (given
    its end of the channel's descriptor and `argument`), as under the grader."""
    judge_end, learner_end = socket.socketpair()
    learner = subprocess.Popen([sys.executable, "-c", learner_code, str(learner_end.fileno()),
                                argument], cwd=REPO, pass_fds=[learner_end.fileno()])
    learner_end.close()
    judge = Judge(remote.Peer(Channel(judge_end), strict=True, call_timeout=60), salt=None,
                  tasks=tasks)
    try:
        judge.serve(idle_timeout=60)
        learner.wait(timeout=60)
    finally:
        if learner.poll() is None:
            learner.kill()
            learner.wait()
    return judge.report()["tasks"]


def test_under_the_grader_each_form_fails_and_an_own_answer_passes(tmp_path):
    (tmp_path / "cells.py").write_text(CELLS + f"KERNEL = {_naive_copied('open')!r}\n")
    tasks = judged(LEARNER, str(tmp_path), ["gather_numpy", "slot_of", "kv_offset",
                                            "naive_kernel"])
    assert "line 6 of plain uses pagedattn_lab.addressing.gather_kv_reference" in \
        tasks["gather_numpy"]["summary"]
    assert "line 9 of built called pagedattn_lab.addressing.physical_slot" in \
        tasks["slot_of"]["summary"]
    assert "holds the code of pagedattn_lab/kernels/prefill_naive.cu" in \
        tasks["naive_kernel"]["summary"]
    assert [tasks[t]["status"] for t in ("gather_numpy", "slot_of", "naive_kernel")] == \
        ["failed"] * 3
    assert tasks["kv_offset"]["status"] == "passed", tasks["kv_offset"]
