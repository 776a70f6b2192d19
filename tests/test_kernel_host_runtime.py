"""The grader's kernel host takes the runtime the grader seeded its cache with as its own
(cpu/compiler.adopt_cached_runtime) instead of building it again, and still builds it again
when a file changed after that (a learner's kernel that wrote the cache); and a trusted
process builds it again when the cache is deleted under it."""
from pathlib import Path

import pytest

from pagedattn_lab.cpu import compiler


@pytest.fixture
def seeded(monkeypatch, tmp_path):
    """A cache holding a runtime built by a trusted process; this process then distrusts it."""
    monkeypatch.setenv("PAGEDATTN_LAB_CACHE_DIR", str(tmp_path))
    cmd, ident, _ = compiler.compiler()
    fibers = compiler._fiber_mode()
    seed = compiler._cached_runtime_objects(cmd, ident, fibers)   # (this cache)
    monkeypatch.setenv("PAGEDATTN_LAB_CPU_TRUST_CACHE", "0")
    monkeypatch.setattr(compiler, "_OWN_RUNTIME", {})
    builds = []
    real = compiler._build_runtime
    monkeypatch.setattr(compiler, "_build_runtime",
                        lambda *a: builds.append(a) or real(*a))
    return (cmd, ident, fibers), seed, builds


def test_the_seeded_runtime_is_taken_without_a_build(seeded):
    key, seed, builds = seeded
    assert compiler.adopt_cached_runtime()
    assert compiler.runtime_objects(*key) == seed and builds == []


def test_a_runtime_changed_after_it_was_taken_is_built_again(seeded):
    key, seed, builds = seeded
    assert compiler.adopt_cached_runtime()
    with open(seed[0], "ab") as fh:   # what a kernel's worker could do to the cache
        fh.write(b"\0")
    objs = compiler.runtime_objects(*key)
    assert len(builds) == 1 and set(objs).isdisjoint(seed)


def test_nothing_is_taken_where_the_cache_is_trusted_or_holds_no_runtime(monkeypatch, tmp_path):
    monkeypatch.setenv("PAGEDATTN_LAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(compiler, "_OWN_RUNTIME", {})
    monkeypatch.setenv("PAGEDATTN_LAB_CPU_TRUST_CACHE", "0")
    assert not compiler.adopt_cached_runtime() and compiler._OWN_RUNTIME == {}
    monkeypatch.setenv("PAGEDATTN_LAB_CPU_TRUST_CACHE", "1")
    assert not compiler.adopt_cached_runtime()


def test_runtime_objects_deleted_while_the_process_runs_are_built_again(monkeypatch, tmp_path):
    monkeypatch.setenv("PAGEDATTN_LAB_CACHE_DIR", str(tmp_path))
    cmd, ident, _ = compiler.compiler()
    fibers = compiler._fiber_mode()
    first = compiler.runtime_objects(cmd, ident, fibers)
    for p in tmp_path.rglob("*.o"):   # (the cache may be deleted at any time: cpu/README.md)
        p.unlink()
    assert compiler.runtime_objects(cmd, ident, fibers) == first
    assert all(Path(o).is_file() for o in first)
