"""The documentation held to the code (hunt 134), for what this session added.

Found wrong and corrected: the CPU README said that of two static `__shared__` arrays declared
in one statement "b follows a directly", which is Clang's layout only (GCC puts a after b), and
that a guard fault's `offset` is "the byte past its end" (it is the first changed byte counted
from the array's start, as a race counts it); the README said any torch tensor is taken without a
copy (a strided one is refused, naming `.contiguous()`), left out that fp8 pages held as
float8_e4m3fn are refused (naming `.view(torch.uint8)` / `.view(np.uint8)`), and gave tensor-core
decode every multiple of 16 as a head size (16 to 256); ARCHITECTURE's package table did not
name where the one strided-array refusal, the torch sharing and the storage-dtype refusal live.

Hunt 152 adds the classes of reference no test checked: every file the READMEs and
docs/ENGINE.md name, every `Class.attr` of a package class, every bare function, option or
environment variable name.
"""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import pagedattn_lab as pal

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "pagedattn_lab"


def _flat(path: str) -> str:
    return re.sub(r"\s+", " ", (ROOT / path).read_text(encoding="utf-8"))


def _defined(path: Path) -> set[str]:
    """Names a module (or every module of a folder) defines: functions, classes, methods,
    module constants and attributes it assigns."""
    names = set()
    for f in [path] if path.suffix == ".py" else path.rglob("*.py"):
        names |= _defined_in(ast.parse(f.read_text(encoding="utf-8")))
    return names


def test_each_package_row_names_only_what_its_modules_define():
    """A function moved to another module (modules are split over time) leaves its row."""
    text = (ROOT / "docs/ARCHITECTURE.md").read_text(encoding="utf-8")
    table = text[text.index("## The package"):text.index("Dependencies point downwards")]
    bad, seen = [], 0
    for line in table.splitlines():
        if not line.startswith("| ") or line.startswith(("| layer", "| ---")):
            continue
        layer, modules, what = line.split(" | ")[:3]
        names = set()
        for m in re.findall(r"`([\w/.]+)`", modules):
            if (PKG / m.rstrip("/")).exists():
                names |= _defined(PKG / m.rstrip("/"))
        for code in re.findall(r"`([^`]+)`", what):
            m = re.fullmatch(r"(?:(\w+)\.)?([A-Za-z_]\w*)(?:\(.*\))?", code)
            # identifiers only (an underscore or a capital: not `run`, `ldmatrix`)
            if not m or not re.search(r"_|[A-Z]", m.group(2)) or code.endswith((".py", ".cuh")):
                continue
            seen += 1
            if m.group(2) not in names:
                bad.append(f"{layer.strip('| ')}: `{code}`")
    assert seen > 10
    assert not bad, f"named in a row whose modules do not define it: {bad}"


def test_the_rows_name_this_sessions_helpers():
    table = _flat("docs/ARCHITECTURE.md")
    for name in ("check_contiguous", "shared_arrays", "check_storage"):
        assert f"`{name}`" in table, name


def test_the_readmes_main_names_are_exported():
    text = _flat("README.md")
    said = text[text.index("Main names:"):text.index("Decode in a serving loop")]
    names = re.findall(r"`(\w+)`", said)
    assert len(names) > 15
    assert not [n for n in names if n not in pal.__all__]


def test_tensor_core_decode_head_sizes_are_the_readmes():
    assert "multiples of 16 up to 256 on tensor cores" in _flat("README.md")
    bt, sl = np.array([[0, 1]], np.int32), np.array([20], np.int32)
    pal.BatchDecodeWrapper().plan(bt, sl, 4, 2, 256, 16, "float16", kernel="tensor_core")
    for head_dim in (40, 272):
        with pytest.raises(ValueError, match="multiple of 16 from 16 to 256"):
            pal.BatchDecodeWrapper().plan(bt, sl, 4, 2, head_dim, 16, "float16",
                                          kernel="tensor_core")


def test_float8_pages_are_refused_naming_the_view_the_readme_gives():
    readme = _flat("README.md")
    assert "pages of float8_e4m3fn are refused, naming `.view(torch.uint8)` or " \
           "`.view(np.uint8)`" in readme
    from pagedattn_lab.cache_write_quant import write_kv_quant
    pages = np.zeros((2, 4, 1, 16), ml_dtypes.float8_e4m3fn)
    rows, one = np.zeros((1, 1, 16), np.float32), np.ones(1, np.float32)
    with pytest.raises(TypeError, match=r"k_cache\.view\(np\.uint8\)"):
        write_kv_quant(rows, rows, pages, pages.copy(), np.array([0]), "fp8_e4m3", "static",
                       k_scale=one, v_scale=one)
    assert not pages.view(np.uint8).any()


def test_a_strided_torch_tensor_is_refused_as_the_readme_says():
    torch = pytest.importorskip("torch")
    assert "any contiguous torch tensor is taken through DLPack, without a copy" in \
        _flat("README.md")
    bt, sl = torch.tensor([[0, 1]], dtype=torch.int32), torch.tensor([20], dtype=torch.int32)
    k = torch.zeros((4, 2, 16, 64)).transpose(1, 2)          # [pages, page, heads, dim], strided
    with pytest.raises(ValueError, match=r"k_cache: .*call k_cache\.contiguous\(\)"):
        pal.paged_attention_decode(torch.zeros((1, 4, 64)), k, torch.zeros(4, 16, 2, 64), bt, sl)


GUARDS = r'''
// a pointer the compiler cannot trace to its array (GCC's object-size check stops a
// traced one at once, hunt 140): the guard after the array catches this one
__device__ __noinline__ float* opaque(float* p) { return p; }
extern "C" __global__ void past(float *out, int which) {
    __shared__ float a[32], b[32];
    a[threadIdx.x] = 1.0f; b[threadIdx.x] = 2.0f;
    __syncthreads();
    volatile float *p = opaque(which ? b : a);
    if (threadIdx.x == 0) p[32] = 5.0f;
    __syncthreads();
    out[threadIdx.x] = a[threadIdx.x] + 10.0f * b[threadIdx.x];
}
'''


def test_one_statements_arrays_are_laid_out_as_the_cpu_readme_says():
    """`__shared__ float a[32], b[32];` gets one guard: a write past the array that the other
    follows lands in it unreported; past the other, it is caught (Linux)."""
    from pagedattn_lab.cpu import KernelFault, RawKernel
    from pagedattn_lab.cpu.compiler import compiler
    said = re.search(r"`__shared__ float a\[32\], b\[32\];`: one follows the other directly, "
                     r"a after b under GCC, b after a under Clang\)",
                     _flat("pagedattn_lab/cpu/README.md"))
    assert said
    assert "`offset` the first changed byte, counted from the array's start" in \
        _flat("pagedattn_lab/cpu/README.md")
    if not sys.platform.startswith("linux"):
        pytest.skip("static shared memory is guarded on ELF systems only")
    first, second = ("a", "b") if compiler()[2] else ("b", "a")   # in memory: first, second
    kernel, out = RawKernel(GUARDS, "past"), np.zeros(32, np.float32)
    kernel((1,), (32,), (out, np.int32(first == "b")))       # past `first`: into `second`
    assert out[0] == {"a": 5 + 10 * 2, "b": 1 + 10 * 5}[second]   # second[0] became 5
    with pytest.raises(KernelFault) as fault:                 # past `second`: its guard
        kernel((1,), (32,), (out, np.int32(second == "b")))
    assert fault.value.variable == second and fault.value.offset == 32 * 4
    assert fault.value.region == "static shared memory" and fault.value.thread is None


def test_slot_mapping_takes_a_strided_torch_table_as_its_docstring_says():
    """It read "Torch tensors are taken as write_kv takes them", which refuses a strided one;
    slot_mapping computes on the host and takes it, rightly."""
    torch = pytest.importorskip("torch")
    assert "a strided one as well, unlike write_kv's" in re.sub(r"\s+", " ",
                                                                 pal.slot_mapping.__doc__)
    tables = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32).t()      # [[0, 2], [1, 3]]
    lens, new = torch.tensor([5, 5], dtype=torch.int32), torch.tensor([1, 1], dtype=torch.int32)
    slots = pal.slot_mapping(tables, lens, new, 4)
    assert slots.dtype == torch.int64 and slots.device.type == "cpu"
    assert slots.tolist() == [2 * 4, 3 * 4]                  # position 4: page index 1, slot 0
    with pytest.raises(ValueError, match=r"call block_tables\.contiguous\(\)"):
        pal.to_csr(tables, lens, 4)


# -- classes of reference no test checked (hunt 152) ---------------------------------------------
DOCS = ("README.md", "docs/ARCHITECTURE.md", "docs/ENGINE.md", "pagedattn_lab/cpu/README.md",
        "benchmarks/STARTING_POINT.md")
# where a doc's relative file name may be read from (ARCHITECTURE's own check: test_prose_hunt87)
FOLDERS = (ROOT, PKG, *(p for p in PKG.iterdir() if (p / "__init__.py").exists()), PKG / "kernels",
           ROOT / "benchmarks", ROOT / "docs")
# files named that are not this repository's: CUDA's headers, CuPy's source, a cache's file
OUTSIDE = {"cuda_bf16.h", "cuda_fp16.h", "cuda_fp8.h", "mma.h", "cupy/cuda/compiler.py",
           "flags.json"}
_FILE = r"[\w.-]+\.(?:py|cu|cuh|sh|md|cpp|h|S|ipynb|json|txt|png|toml|yml)"


def test_every_file_the_readmes_and_the_engine_doc_name_exists():
    """A path with a folder anywhere in the text, and a bare file name in backticks."""
    bad = []
    for doc in ("README.md", "docs/ENGINE.md", "pagedattn_lab/cpu/README.md"):
        text = (ROOT / doc).read_text(encoding="utf-8")
        names = set(re.findall(rf"(?<![\w/.-])([\w-]+(?:/[\w.-]+)*/{_FILE})(?![\w/])", text))
        names |= set(re.findall(rf"`({_FILE})`", text))
        for name in sorted(names - OUTSIDE):
            if "..." not in name and not any((f / name).exists() for f in FOLDERS):
                bad.append(f"{doc}: {name}")
    assert not bad, f"named but not there: {bad}"


def _class_attributes() -> dict[str, tuple[set[str], list[str]]]:
    """Each class of the package -> (the names its body defines or assigns on self, its bases)."""
    found: dict[str, tuple[set[str], list[str]]] = {}
    for f in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                names, bases = found.setdefault(node.name, (set(), []))
                names |= _defined_in(node)
                bases += [b.id for b in node.bases if isinstance(b, ast.Name)]
    return found


def _defined_in(node: ast.AST) -> set[str]:
    names = set()
    for sub in ast.walk(node):
        if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(sub.name)
        elif isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
            names.add(sub.id)
        elif isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Store):
            names.add(sub.attr)
    return names


def _has(classes, cls: str, attr: str) -> bool:
    names, bases = classes[cls]
    return attr in names or any(b in classes and _has(classes, b, attr) for b in bases)


def test_every_class_attribute_the_docs_name_exists():
    """`Class.attr` (or `Class.a/b/c`) of a package class: test_docs_hunt100 checks
    `module.attr` only (lower case), so `Limits.judge_mb` or `RequestOutput.logits` could go
    stale unseen."""
    classes = _class_attributes()
    bad, seen = [], 0
    for doc in DOCS:
        for code in re.findall(r"`([^`\n]+)`", (ROOT / doc).read_text(encoding="utf-8")):
            for cls, attrs in re.findall(r"(?<![\w./])([A-Z]\w*)\.(\w+(?:/\w+)*)", code):
                if cls not in classes:
                    continue
                for attr in attrs.split("/"):
                    seen += 1
                    if not _has(classes, cls, attr):
                        bad.append(f"{doc}: `{code}`: {cls} has no {attr}")
    assert seen > 10
    assert not bad, "\n".join(bad)


# Names a doc gives that are not this repository's: Triton's function, and vLLM's fields that
# docs/ENGINE.md says the engine lacks.
NOT_OURS = {"do_bench", "best_of", "min_p", "min_tokens"}


def _python_words() -> set[str]:
    """Every name the package's Python (and the benchmark scripts) defines, takes or assigns,
    and every word of its string constants (environment variables, flags, keys)."""
    words = set()
    for f in (*PKG.rglob("*.py"), *ROOT.glob("benchmarks/*.py")):
        tree = ast.parse(f.read_text(encoding="utf-8"))
        words |= _defined_in(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.arg) or (isinstance(node, ast.keyword) and node.arg):
                words.add(node.arg)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                words |= set(re.findall(r"\w+", node.value))
    return words


def test_every_function_option_and_variable_the_readmes_name_exists():
    """A bare name in backticks with an underscore or a capital inside (`gather_kv_reference`,
    `PAGEDATTN_LAB_CPU_TIMEOUT`, `top_p`): defined by the package's Python, or a word of its
    strings, its C/C++ sources or the GPU check script. A function renamed left the old name
    in README.md and the CPU README, where no test looked. Not CUDA's intrinsics (`__hgt2`):
    the shim makes many by pasting tokens, and the CPU tests compile them."""
    import builtins
    known = _python_words() | set(dir(builtins)) | NOT_OURS
    sources = [*PKG.rglob("*.cu"), *PKG.rglob("*.cuh"), *PKG.rglob("*.h"), *PKG.rglob("*.cpp"),
               ROOT / ".ci/gpu_check.sh"]
    for f in sources:
        known |= set(re.findall(r"\w+", f.read_text(encoding="utf-8", errors="replace")))
    bad, seen = [], 0
    for doc in ("README.md", "docs/ENGINE.md", "pagedattn_lab/cpu/README.md"):
        for code in re.findall(r"`([^`\n]+)`", (ROOT / doc).read_text(encoding="utf-8")):
            m = re.fullmatch(r"([A-Za-z_]\w*)(?:\(.*\))?", code)
            if not m or not re.search(r"[^\W_]_[^\W_]|[a-z][A-Z]", m.group(1)) or \
                    re.match(r"__[a-z]", m.group(1)):
                continue
            seen += 1
            if m.group(1) not in known:
                bad.append(f"{doc}: `{code}`")
    assert seen > 50
    assert not bad, f"named but defined nowhere: {bad}"
