"""The repository's own documentation held to the code (hunt 100).

docs/ARCHITECTURE.md maps the package, README.md and pagedattn_lab/cpu/README.md name modules,
attributes, signatures and command-line flags: each one checked here is one a reader would
follow. Found wrong and corrected: the package table left out eight top-level modules (csr,
quant and the two beside it, ...), said torch is imported only by `distributed/` (also
`attention_common.py` and the bench's baselines) and named one of the three imports that go
up the table; the CPU README gave `count_accesses` a `racecheck=False` default that is `None`
(the kernel's setting, else the environment's), and `KernelFault`'s docstring left out the
`syscall` attribute that README gives it; the README said `BlockAllocator.restore` refuses a
state of another pool, which it restores whenever this pool could have been in it; NOTES.md
told to reproduce with `benchmarks/explore.py --gqa`, a flag gone since 2026-12-01; the CPU
README (and compiler.py) gave GCC's 0xfe fill of an uninitialized int as -16843009, which is
-16843010.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pagedattn_lab as pal
from pagedattn_lab.cpu import count_accesses

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "pagedattn_lab"
DOCS = ("README.md", "docs/ARCHITECTURE.md", "pagedattn_lab/cpu/README.md",
        "benchmarks/STARTING_POINT.md")


def _text(path: str) -> str:
    return (ROOT / path).read_text(encoding="utf-8")


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def _package_table() -> str:
    text = _text("docs/ARCHITECTURE.md")
    return text[text.index("## The package"):text.index("Dependencies point downwards")]


def test_the_package_table_names_every_top_level_module_and_folder():
    table = _package_table()
    named = set(re.findall(r"`([\w/*.]+)`", table))
    named |= {name.split("/")[0] + "/" for name in named if "/" in name}   # `kernels/*.cu`
    modules = {p.name for p in PKG.glob("*.py") if p.name != "__init__.py"}
    folders = {f"{p.name}/" for p in PKG.iterdir() if (p / "__init__.py").exists()}
    missing = sorted((modules | folders) - named)
    assert not missing, f"docs/ARCHITECTURE.md's package table leaves out {missing}"


def test_the_kernel_row_names_every_header_and_globs_the_sources():
    table = _package_table()
    headers = sorted(p.name for p in (PKG / "kernels").glob("*.cuh") if p.name not in table)
    assert not headers, f"the kernels row leaves out {headers}"
    assert "`kernels/*.cu`" in table


def _module(name: str) -> str | None:
    """pagedattn_lab's module that a doc's `name.attr` means, if any."""
    for cand in (name, *(f"{sub}.{name}" for sub in ("cpu", "grading", "engine", "bench",
                                                     "distributed", "viz"))):
        path = PKG.joinpath(*cand.split("."))
        if path.with_suffix(".py").exists() or (path / "__init__.py").exists():
            return f"pagedattn_lab.{cand}"
    return None


def test_every_module_attribute_the_docs_name_exists():
    cache = pal.PagedKVCache(num_pages=2, page_size=4, num_kv_heads=1, head_dim=8)
    bad, seen = [], 0
    for doc in DOCS:
        for code in re.findall(r"`([^`\n]+)`", _text(doc)):
            for mod, attr in re.findall(r"(?<![\w.])(?:pagedattn_lab\.)?([a-z_]+(?:\.[a-z_]+)?)"
                                        r"\.([A-Za-z_]\w*)", code):
                if attr in ("py", "cu", "cuh", "md", "json", "cpp", "h"):
                    continue
                if mod == "cache":   # the README's PagedKVCache instance, `cache.dtype`
                    seen += 1
                    if not hasattr(cache, attr):
                        bad.append(f"{doc}: `{code}`: a PagedKVCache has no {attr}")
                    continue
                name = _module(mod)
                if name is None:
                    continue
                seen += 1
                module = importlib.import_module(name)
                sub = PKG.joinpath(*name.split(".")[1:], f"{attr}.py")
                if not (hasattr(module, attr) or sub.exists()):
                    bad.append(f"{doc}: `{code}`: {name} has no {attr}")
    assert seen > 10
    assert not bad, "\n".join(bad)


def test_tc_config_takes_the_keywords_the_readme_passes():
    from pagedattn_lab.decode_plan import tc_config
    params = inspect.signature(tc_config).parameters
    passed = re.findall(r"`tc_config\((\w+)=", _text("README.md"))
    assert passed and all(p in params for p in passed), passed


def test_count_accesses_signature_is_the_cpu_readmes():
    doc = _flat(_text("pagedattn_lab/cpu/README.md"))
    written = re.search(r"`count_accesses\(([^)]*)\) -> AccessCounts`", doc).group(1)
    documented = {}
    for part in (p.strip() for p in written.split(",")):
        if part != "*":
            name, _, default = part.partition("=")
            documented[name] = default or None
    actual = {name: (None if p.default is p.empty else repr(p.default))
              for name, p in inspect.signature(count_accesses).parameters.items()}
    assert documented == actual


def test_allocator_restore_refuses_what_the_readme_says_and_restores_the_rest():
    readme = _flat(_text("README.md"))
    assert "refuses a state of another pool)" not in readme
    assert ("`restore()` (which refuses, changing nothing, a state this pool cannot have been "
            "in: one that hands out more pages than it has, loses a page, or lists one twice; "
            "a state of another pool that this one could have been in is restored)") in readme
    big = pal.BlockAllocator(8)
    big.allocate(6)
    small = pal.BlockAllocator(4)
    small.allocate(1)
    before = small.state()
    with pytest.raises(ValueError, match="next_fresh 6"):
        small.restore(big.state())                      # more pages than it has
    state = small.state()
    with pytest.raises(ValueError, match="lost"):
        small.restore(state._replace(owners={}))        # loses page 0
    with pytest.raises(ValueError, match="twice"):
        small.restore(state._replace(returned=(0,)))    # page 0 free and in use
    assert small.state() == before
    other = pal.BlockAllocator(5)
    other.allocate(2)
    small.restore(other.state())                        # one this pool could have been in
    assert small.free_list()[:2] == [2, 3] and small.ref_count(1) == 1


def _help(module: str) -> str:
    out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("module, flags", [
    ("pagedattn_lab.grade", ["--jobs", "--timeout", "--out", "--memory-mb", "--isolation"]),
    ("pagedattn_lab.exercises", ["--check"]),
    ("pagedattn_lab.bench", ["--no-prefill", "--l2-flush", "--out", "--quick", "--only"]),
    ("pagedattn_lab.bench.quant", ["--l2-flush", "--out"]),
    ("pagedattn_lab.bench.prefill", ["--out"]),
    ("pagedattn_lab.grading.runner", ["--channel-fd", "--audit", "--compiler", "--limits"]),
    ("pagedattn_lab.grading.kernel_host", ["--channel-fd", "--audit", "--compiler", "--limits"]),
])
def test_the_commands_the_docs_write_take_their_flags(module, flags):
    text = _help(module)
    assert all(flag in text for flag in flags), (module, [f for f in flags if f not in text])
    # every flag a doc or the module's own usage line writes after `python -m module`
    written = []
    sources = [_text(d) for d in (*DOCS, "benchmarks/NOTES.md", ".ci/gpu_check.sh")] + [
        p.read_text(encoding="utf-8") for p in (*PKG.rglob("*.py"), *ROOT.glob("benchmarks/*.py"))]
    for source in sources:
        for line in re.findall(rf"python3? -m {re.escape(module)}(?![\w.])([^\n`]*)", source):
            written += re.findall(r"(?<![\w-])(--[a-z][\w-]*)", line)
    unknown = sorted({f for f in written if f not in text})
    assert not unknown, f"{module} has no {unknown}"


def test_the_isolation_limits_are_the_readmes():
    from pagedattn_lab.grading.isolation import Limits
    readme = _flat(_text("README.md"))
    lim = Limits()
    assert (f"address space ({lim.memory_mb // 1024} GiB, `--memory-mb`" in readme
            and f"{lim.processes} processes, {lim.open_files} open files, {lim.file_mb} MiB "
                f"per file, CPU time, {lim.box_mb} MiB in its folder and {lim.tmp_mb} MiB in /tmp"
            in readme)


def test_the_readmes_first_example_runs_and_matches_the_reference():
    text = _text("README.md")
    block = text[text.index("## API conventions"):]
    code = re.search(r"```python\n(.*?)```", block, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)   # noqa: S102 - the README's own example
    assert scope["out"].shape == scope["ref"].shape == (1, 8, 64)
    assert abs(scope["out"] - scope["ref"]).max() < 1e-5


def _rows() -> dict[str, tuple[int, str]]:
    """Each top-level module (stem) or folder of the package table -> (row, layer)."""
    rows = [line for line in _package_table().splitlines()
            if line.startswith("| ") and not line.startswith(("| layer", "| ---"))]
    placed: dict[str, tuple[int, str]] = {}
    for i, line in enumerate(rows):
        layer, modules = line.split(" | ")[:2]
        for name in re.findall(r"`([\w/*.]+)`", modules):
            unit = name.split("/")[0] if "/" in name else name.removesuffix(".py")
            placed.setdefault(unit, (i, layer.strip("| ")))
    return placed


def _imports() -> set[tuple[str, str]]:
    """(importer, imported) between the package's top-level modules and folders, lazy
    imports included."""
    pairs = set()
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(PKG).parts
        if parts == ("__init__.py",):
            continue
        unit = parts[0].removesuffix(".py")
        depth = len(parts) - 1
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                if node.level - 1 < depth:          # within its own folder
                    continue
                first = (node.module or "").split(".")[0]
                targets = [first] if first else [a.name for a in node.names]
            elif (node.module or "").startswith("pagedattn_lab."):
                targets = [node.module.split(".")[1]]
            else:
                continue
            pairs |= {(unit, t) for t in targets if t != unit}
    return pairs


# What the sentence under the table names as going upwards.
UPWARDS = {("kernels", "rawkernel"), ("rawkernel", "cpu"), ("viz", "bench")}


def test_dependencies_point_downwards_but_where_architecture_says():
    rows = _rows()
    up = {(a, b) for a, b in _imports() if a in rows and b in rows and rows[b][0] > rows[a][0]}
    assert up == UPWARDS, sorted(up ^ UPWARDS)
    sentence = _flat(_text("docs/ARCHITECTURE.md")).split("Dependencies point downwards")[1]
    sentence = sentence[:sentence.index("never the other way round")]
    for named in ("`kernels/`", "`RawKernel`", "`cpu/`", "`viz/`", "`bench/workloads.py`"):
        assert named in sentence, named


def test_nothing_outside_teaching_imports_teaching_code():
    rows = _rows()
    teaching = {unit for unit, (_, layer) in rows.items() if layer == "teaching"}
    wrong = sorted((a, b) for a, b in _imports() if b in teaching and a not in teaching)
    assert not wrong, wrong


def test_the_cpu_exceptions_docstrings_name_the_attributes_of_the_readmes_table():
    import pagedattn_lab.cpu as cpu
    readme = _text("pagedattn_lab/cpu/README.md")
    table = readme[readme.index("| exception (all `RuntimeError`)"):readme.index("Bad launch")]
    missing = []
    for row in [line for line in table.splitlines()[2:] if line.startswith("| ")]:
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        name = re.match(r"`(\w+)`", cells[0]).group(1)
        cls = getattr(cpu, name)
        assert issubclass(cls, RuntimeError), name
        doc = " ".join(inspect.getdoc(k) or "" for k in cls.__mro__
                       if k.__module__.startswith("pagedattn_lab"))
        for attrs in re.findall(r"`([^`]+)`", cells[-1]):
            for attr in re.findall(r"\b[a-z_]+\b", attrs.split("(")[0]):
                if not re.search(rf"\b{attr}\b", doc):
                    missing.append(f"{name}.{attr}")
    assert not missing, missing


def _script_flags(script: Path) -> set[str]:
    """The flags a benchmarks/ script takes: its own, and those of the scripts it hands its
    arguments to (`import explore as ex`), and bench.timing's --l2-flush."""
    source = script.read_text(encoding="utf-8")
    flags = set(re.findall(r"""["'](--[a-z][\w-]*)["']""", source))
    if "add_l2_flush_argument" in source:
        flags.add("--l2-flush")
    for imported in re.findall(r"^import (\w+) as \w+", source, re.M):
        if (script.parent / f"{imported}.py").exists():
            flags |= _script_flags(script.parent / f"{imported}.py")
    return flags


def test_the_benchmark_scripts_take_the_flags_the_docs_write():
    sources = [ROOT / d for d in DOCS] + [ROOT / "benchmarks" / "NOTES.md", ROOT / ".ci" /
                                          "gpu_check.sh", *(ROOT / "benchmarks").glob("*.py")]
    bad = []
    for source in sources:
        text = source.read_text(encoding="utf-8")
        for script, rest in re.findall(r"(benchmarks/\w+\.py)((?:[ \t]+(?:--?[\w-]+|[^\s`|;&)]+))*)",
                                       text):
            path = ROOT / script
            assert path.exists(), f"{source.name} names {script}"
            unknown = set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", rest)) - _script_flags(path)
            bad += [f"{source.relative_to(ROOT)}: {script} {flag}" for flag in sorted(unknown)]
    assert not bad, bad


def test_torch_is_imported_where_architecture_says():
    importers = set()
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                     else [])
            if any(n == "torch" or n.startswith("torch.") for n in names):
                importers.add(path.relative_to(PKG).as_posix())
    outside = sorted(p for p in importers
                     if not p.startswith(("distributed/", "bench/")) and p != "attention_common.py")
    assert not outside, outside
    row = next(line for line in _package_table().splitlines()
               if line.startswith("| tensor parallelism |"))
    assert "torch is imported only here" not in row
    assert "`attention_common.py`" in row and "`bench/`" in row


UNINIT = r'''
extern "C" __global__ void uninit(int* out_i, float* out_f) {
    int acc[4]; float facc[4];
    for (int i = 0; i < 4; ++i) { out_i[i] = acc[i]; out_f[i] = facc[i]; }
}
'''


def test_the_gcc_fill_pattern_is_quoted_as_the_executor_gives_it():
    four = np.frombuffer(b"\xfe" * 4, np.int32)[0], np.frombuffer(b"\xfe" * 4, np.float32)[0]
    for path in ("pagedattn_lab/cpu/README.md", "pagedattn_lab/cpu/compiler.py"):
        said = re.search(r"a float (-[\d.e]+), an int (-\d+)", _flat(_text(path)))
        assert said, path
        assert int(said.group(2)) == four[0], (path, said.group(2), four[0])   # was -16843009
        assert f"{four[1]:.1e}" == f"{float(said.group(1)):.1e}", path
    oi, of = np.zeros(4, np.int32), np.zeros(4, np.float32)
    pal.RawKernel(UNINIT, "uninit")((1,), (1,), (oi, of))
    if not (oi == four[0]).all():
        pytest.skip(f"this compiler does not fill locals with 0xfe bytes: {oi}")
    assert (of.view(np.int32) == four[0]).all()


@pytest.mark.parametrize("timeout, error", [(0, ValueError), (float("nan"), ValueError),
                                            (True, TypeError), ("5", TypeError)])
def test_the_dual_raw_kernel_refuses_a_bad_timeout_when_built(timeout, error):
    """As cpu.RawKernel does: a timeout of 0 used to be accepted until the first launch."""
    from pagedattn_lab.rawkernel import RawKernel
    source = 'extern "C" __global__ void k(float *x) { x[threadIdx.x] = 1.0f; }'
    with pytest.raises(error, match="timeout"):
        RawKernel(source, "k", timeout=timeout)
