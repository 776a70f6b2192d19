"""The mma.sync prefill kernel (kernels/prefill_mma.cu) against the float64 packed reference.

The CPU executor runs the kernel's PTX tensor-core calls through mma_ptx.cuh's emulation,
with the PTX layouts, so these tests check the kernel's layout arithmetic (which lane holds
which row and key, P packed as the next A operand, ldmatrix addresses) without a GPU. Every
head size the wrapper takes, fp16 and bf16; all-new prompts, chunks over a cached prefix,
decode tokens in one batch; GQA and MQA; lengths that are and are not tile or page
multiples; NaN in every unused cache slot; outputs poisoned with NaN (check_wrapper).
"""
import numpy as np
import pytest

from pagedattn_lab.prefill_wrapper import HEAD_DIMS, Variant, variant_for
from tests.test_prefill_wrapper import bf16, check_wrapper


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_the_plan_runs_long_prompts_on_the_mma_kernel_at_every_head_size(rng, head_dim):
    """A prompt of 70 queries (past the 64-row cut: the mma kernel; one 64-key tile and a
    bit), a chunk of 5 over a cached prefix and a decode token (the packed launch)."""
    w = check_wrapper(np, rng, [70, 40, 23], [70, 5, 1], 16, 2, 1, head_dim)
    assert w.parts[0].variant == variant_for(head_dim, 70)
    assert w.parts[0].variant.mma and w.kernel_name.startswith("prefill_mma (mma.sync")


CASES = [
    # lens, q_lens, page, heads, kv heads, head_dim, variant
    ([150, 40, 33], [150, 9, 1], 16, 4, 2, 64, "mw4r2k64q"),   # prompt, chunk, decode; GQA
    ([97], [97], 7, 3, 1, 32, "mw2r2k32"),                      # MQA x3, page 7, tile + 1
    ([300, 2], [45, 2], 1, 2, 2, 80, "mw1r2k128p3"),            # page 1, 128-key tiles
    ([64, 17], [64, 17], 16, 2, 2, 96, "mw8r1k32"),             # tile and page multiples
    ([130], [130], 32, 2, 1, 128, "mw4r1k64q"),                 # Q in registers, d128
    ([80, 1], [33, 1], 8, 4, 4, 256, "mw2r1k32p4"),             # d256, four stages
    ([77], [77], 16, 2, 2, 192, "mw1r1k32"),                    # one warp, d192
    ([70], [70], 16, 2, 1, 112, "mw2r2k64"),
]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("lens, q_lens, page_size, num_heads, num_kv_heads, head_dim, variant",
                         CASES)
def test_mma_variants_on_the_cpu_executor(rng, dtype, lens, q_lens, page_size, num_heads,
                                          num_kv_heads, head_dim, variant):
    dt = np.float16 if dtype == "float16" else bf16()
    w = check_wrapper(np, rng, lens, q_lens, page_size, num_heads, num_kv_heads, head_dim, dt,
                      variant=variant)
    assert w.variant.startswith(variant)


def test_non_causal_and_a_packed_decode_launch_on_the_mma_kernel(rng):
    check_wrapper(np, rng, [90, 12], [90, 4], 8, 2, 1, 64, causal=False, variant="mw4r1k32")
    w = check_wrapper(np, rng, [37, 5, 80], [1, 1, 80], 7, 16, 1, 32, decode_variant="mw1r1k64")
    assert [(p.pack, p.variant.name) for p in w.parts][1] == (16, "mw1r1k64")


def test_mma_and_wmma_variant_names():
    v = Variant.parse("mw4r2k64p3q")
    assert (v.mma, v.warps, v.row_frags, v.kv_tile, v.stages, v.q_in_regs) == \
        (True, 4, 2, 64, 3, True)
    assert v.name == "mw4r2k64p3q" and v.source == "prefill_mma"
    assert Variant.parse("w4r2k64u2").source == "prefill_tc"
    assert not any("UNROLL" in o for o in v.options(64))
    for bad in ["mw4r2k64u2", "w4r2k64"]:   # unroll is the WMMA kernel's only
        with pytest.raises(ValueError, match="^variant: "):
            Variant.parse(bad)


def plant(monkeypatch, line: str, replacement: str) -> None:
    """Make the prefill wrapper build a copy of prefill_mma.cu (expanded) with `line`, which
    must stand there once, replaced: a planted mistake the tests must catch."""
    import pagedattn_lab.prefill_wrapper as pw   # noqa: PLC0415
    from pagedattn_lab import kernels   # noqa: PLC0415
    from pagedattn_lab.rawkernel import RawKernel   # noqa: PLC0415
    src = kernels.expanded_source("prefill_mma")
    assert src.count(line) == 1, line
    planted = src.replace(line, replacement)
    monkeypatch.setattr(pw, "load_kernel",
                        lambda filename, name, options: RawKernel(planted, name, options=options))


def test_a_planted_mistake_is_caught(rng, monkeypatch):
    """The tests can fail: the kernel with V's ldmatrix rows shifted by one key (a planted
    mistake in a copy of its source) is far from the reference."""
    plant(monkeypatch, "const int v_lane = (lane & 15) * LD_KV",
          "const int v_lane = ((lane + 1) & 15) * LD_KV")
    with pytest.raises(AssertionError, match="relative error"):
        check_wrapper(np, rng, [70], [70], 16, 2, 1, 64, variant="mw4r1k32")


GPU_CASES = [
    ([2048, 2048], [2048, 2048], 16, 8, 8, 64),
    ([1500 + 256, 700 + 60, 33], [256, 60, 33], 16, 32, 8, 128),     # chunks over prefixes
    ([1000, 1, 77] + [300] * 5, [1000, 1, 77] + [1] * 5, 16, 32, 32, 128),   # mixed
    ([129, 65, 1], [129, 65, 1], 1, 16, 1, 96),                          # MQA, page 1
    ([500, 257], [300, 257], 256, 8, 2, 256),
    ([200], [200], 64, 4, 4, 112),
    ([333, 64], [333, 64], 32, 8, 4, 192),
    ([1000, 70], [117, 70], 16, 64, 8, 80),
    ([300, 99], [300, 99], 8, 4, 1, 32),
    ([50, 33, 1], [50, 20, 1], 16, 8, 2, 128),                           # short prompts
]
GPU_VARIANTS = ["mw4r2k64", "mw4r2k32", "mw8r2k32", "mw4r1k64q", "mw4r2k64p3", "mw8r1k128q",
                "mw4r2k64q", "mw2r1k32p4", "mw1r1k32"]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("lens, q_lens, page_size, num_heads, num_kv_heads, head_dim", GPU_CASES)
def test_the_mma_plan_on_the_gpu(rng, dtype, lens, q_lens, page_size, num_heads, num_kv_heads,
                                 head_dim):
    import cupy
    dt = np.float16 if dtype == "float16" else bf16()
    w = check_wrapper(cupy, rng, lens, q_lens, page_size, num_heads, num_kv_heads, head_dim, dt)
    assert w.parts[0].variant.mma


@pytest.mark.gpu
@pytest.mark.parametrize("variant", GPU_VARIANTS)
def test_mma_variants_on_the_gpu(rng, variant):
    import cupy
    head_dim = 64 if variant.endswith("q") and "r2" in variant else 128
    check_wrapper(cupy, rng, [700, 300, 33], [700, 37, 1], 16, 8, 2, head_dim, variant=variant)
