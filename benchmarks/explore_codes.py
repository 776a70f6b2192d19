"""The PTX tensor-core decodes over compressed pages (issue 12's GQA target, session 4): each
kernel's planner shape with extra -D options of the codes paths against the same shape
without them, the fp16 planner and the SIMT kernel over the same codes, in one process
(explore_rows.py's machinery; NOTES.md, "Compressed GQA on tensor cores (session 4)").

    python3 benchmarks/explore_codes.py [--rows D64-gqa4] [--reps 15] [--json out.json]
    python3 benchmarks/explore_codes.py --qk8 [...]   # session 5: QK8's rows instead of CODES
    python3 benchmarks/explore_codes.py --ncu NAME [NAME ...]   # one launch each, for ncu

Variant names: "R"/"M" (decode_mma_rows.cu / decode_mma.cu) + codes + "bal"/"items" (the
planner's shape on that work scheme, explore_rows.py), then a tag: "old" = the codes paths as
they were before session 4 (OLD: the three knobs off: main's cubins), "slots0" / "ex2off" =
one knob off; no tag = this tree's defaults; " qk8" / " qk16" = S on 8-bit tensor cores from
the K codes (decode_mma_rows.cu -DQK_MMA8, session 5) on / off whatever the planner's default,
" pairs" = its head pairs' layout without it (-DHEAD_PAIRS).
"planner fp8" etc.: the plan's own choice; "simt ...": kernels/decode.cu over the same codes."""
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cupy as cp  # noqa: E402

import explore as ex  # noqa: E402
import explore_rows as er  # noqa: E402

V = ex.V
OLD = ("-DCVT_DIRECT=0", "-DCOPY_SLOTS=0", "-DSOFTMAX_EX2=0")
TAGS = {"": (), " old": OLD, " slots0": ("-DCOPY_SLOTS=0",), " ex2off": ("-DSOFTMAX_EX2=0",)}
for base in [n for n in list(V) if n.startswith(("R ", "M ")) and n.endswith((" bal", " items"))
             and V[n]["quant"]]:
    for tag, extra in TAGS.items():
        if tag:
            V[base + tag] = {**V[base], "extra": extra}
for q, qn in ((2, "fp8"), (1, "int8")):   # alternates on balanced ranges, 3 blocks per SM
    V[f"R {qn} W4P/bal"] = {**er.rshape(4, 128, 2, mb=3, quant=q, pipe=True), "split": "balanced"}
    V[f"M {qn} mb3/bal"] = {**ex.mshape(4, 128, 2, mb=3, quant=q), "split": "balanced"}

for base in [n for n in list(V) if n.startswith("R ") and n.endswith((" bal", " items"))
             and V[n]["quant"]]:
    for tag, options in ((" qk8", dict(qk_mma8=True)),
                         (" qk16", dict(qk_mma8=False, head_pairs=False)),
                         (" pairs", dict(qk_mma8=False, head_pairs=True))):
        V[base + tag] = {**V[base], "mma": {**V[base]["mma"], **options}}

for q, qn in ((2, "fp8"), (1, "int8")):   # session 5: the planner's shape with two S chains
    V[f"R {qn} C2/bal"] = {**er.rshape(4, 128, 2, mb=3, quant=q, s_chains=2), "split": "balanced"}

QK8 = {   # session 5: QK_MMA8 on and off ("planner" codes: the head pairs' layout), fp16 first
    "D64-gqa4": ["planner"] + [f"planner {q}{t}" for q in ("int8", "fp8") for t in ("", "/tok")]
    + [f"R {q}{t} bal{k}" for q in ("int8", "fp8") for t in ("", "/tok")
       for k in (" qk8", " qk16")]
    + [f"R {q} {s_}/bal" for q in ("fp8", "int8") for s_ in ("W4P", "C2")]
    + ["planner", "planner fp8", "planner int8"],   # again: the run's spread
    "8x32k-gqa4": ["planner", "planner int8", "planner fp8", "R int8 items qk8",
                   "R int8 items qk16", "R fp8 items qk16"],
}

CODES = {   # the first variant is the err column's reference (fp16 on the dequantized cache)
    "D64-gqa4": ["planner"]
    + [f"planner {q}{t}" for q in ("fp8", "int8") for t in ("", "/tok")]
    + [f"R fp8 bal{t}" for t in ("", " slots0", " ex2off", " old")]
    + ["R int8 bal", "R int8 bal old", "R fp8 items", "R fp8 W4P/bal"]
    + [f"M fp8 bal{t}" for t in ("", " slots0", " old")] + ["M fp8 mb3/bal", "M int8 bal"]
    + [f"R {q}/tok bal{t}" for q in ("fp8", "int8") for t in ("", " old")]
    + [f"simt {q}{t}" for q in ("fp8", "int8") for t in ("", "/tok")]
    + ["planner", "planner fp8", "R fp8 bal"],   # again: the run's spread
    "8x32k-gqa4": ["planner", "planner fp8", "R fp8 items", "simt fp8"],
}

_config = ex.config


def config(w, name):
    """explore's config plus the variant's extra -D options."""
    cfg = _config(w, name)
    extra = V[name].get("extra", ())
    return cfg._replace(options=cfg.options + tuple(extra)) if extra else cfg


def ncu(names):
    """One launch of each named variant on D64 GQA 32/8 (codes from a random fp16 cache)."""
    import torch

    from pagedattn_lab.bench.workloads import build_decode_inputs, decode_workloads
    w = {w.name: w for w in decode_workloads()}["D64-gqa4"]
    inp = build_decode_inputs(cp, w)
    q, k, v = inp["q"], inp["k_cache"], inp["v_cache"]
    for name in names:
        quant, tok = V[name]["quant"], V[name]["tok"]
        kc, ks, _ = ex.quantize(torch, k, quant, tok)
        vc, vs, _ = ex.quantize(torch, v, quant, tok)
        p = ex.plan(inp, w, name)
        ex.launch(p, q, kc, vc, cp.empty_like(q), 1 / math.sqrt(w.head_dim), ks, vs)
        cp.cuda.Device().synchronize()
        print(name, p.tc_config.options, flush=True)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    ex.config = config
    if "--ncu" in argv:
        ex.plan_with = er.plan_with
        return ncu([a for a in argv if a != "--ncu"])
    er.BALANCED.clear()
    er.BALANCED.update(QK8 if "--qk8" in argv else CODES)
    er.main(["--balanced", "--no-flashinfer"] + [a for a in argv if a != "--qk8"])


if __name__ == "__main__":
    main()
