"""Picking the next token from the logits: greedy, or with a temperature and vLLM's top-k
and top-p filters.

Randomness is drawn per request and per output position (from the request's seed), not from
one stream for the whole batch, so a request samples the same tokens however the scheduler
batched, chunked or preempted it.
"""
from __future__ import annotations

import hashlib

import numpy as np

from ..backend import to_numpy
from .request import Request


def request_rng(req: Request, engine_seed: int) -> np.random.Generator:
    """The stream of the request's next output position: its seed (or the engine's seed and
    its id) hashed, the position as the spawn key. (A list [seed, position] made streams of
    different requests one: NumPy pads short seeds with zeros, so seed 0 at position 3 drew
    what request 3 without a seed drew at position 0, under the engine's seed 0.)"""
    seed = req.params.seed
    key = ("seed", int(seed)) if seed is not None else ("engine", int(engine_seed), int(req.rid))
    entropy = int.from_bytes(hashlib.sha256(repr(key).encode()).digest(), "little")
    return np.random.default_rng(np.random.SeedSequence(entropy,
                                                        spawn_key=(len(req.output_ids),)))


def sample(logits, requests: list[Request], engine_seed: int, xp) -> list[int]:
    """One token per row of logits ([len(requests), vocab], float32, on the model's device):
    the argmax where a request's temperature is 0, else a draw after its temperature, top_k
    and top_p (filtered_weights)."""
    tokens = [0] * len(requests)
    greedy = [i for i, r in enumerate(requests) if r.params.temperature == 0]
    if greedy:
        rows = logits if len(greedy) == len(requests) else logits[xp.asarray(greedy)]
        for i, t in zip(greedy, to_numpy(xp.argmax(rows, axis=-1)).tolist()):
            tokens[i] = int(t)
    for i, req in enumerate(requests):
        if req.params.temperature == 0:
            continue
        w = filtered_weights(scaled_logits(to_numpy(logits[i]).astype(np.float64),
                                           req.params.temperature),
                             req.params.top_k, req.params.top_p)
        # One draw per (request, position) whatever the filters: they move no stream.
        cdf = np.cumsum(w)
        u = request_rng(req, engine_seed).random() * cdf[-1]
        tokens[i] = int(min(np.searchsorted(cdf, u, side="right"), len(cdf) - 1))
    return tokens


def scaled_logits(x: np.ndarray, temperature: float) -> np.ndarray:
    """float64 logits / temperature (> 0)."""
    with np.errstate(over="ignore"):
        z = x / temperature
        if np.isinf(z).any():   # a temperature so small (< ~1e-307) that logits / t
            # overflow (inf - inf: NaN, then the last token): its limit, 0 at the largest
            # logits (sampled evenly when tied, where greedy takes the first) and -inf
            # elsewhere. Any -inf (all logits negative, or masked ones) takes this path
            # too: shifting by the max first changes nothing in the distribution.
            z = (x - x.max()) / temperature
    return z


def filtered_weights(z: np.ndarray, top_k: int, top_p: float) -> np.ndarray:
    """exp(z - max z), the softmax of z before normalizing, with 0 outside the top_k
    largest z, then outside the fewest most likely tokens whose probability reaches top_p
    (vLLM's order; top_k 0 or -1 and top_p 1: all kept). A token is kept or dropped with
    every token tied with it: the cut is a value, so it never depends on token ids."""
    if 0 < top_k < z.size:
        z = np.where(z >= np.partition(z, -top_k)[-top_k], z, -np.inf)
    w = np.exp(z - z.max())
    if top_p < 1:
        probs = w / w.sum()
        desc = np.sort(probs)[::-1]
        # the first where the running sum reaches top_p (rounding may leave it short: all)
        last = min(int(np.searchsorted(np.cumsum(desc), top_p)), desc.size - 1)
        w = np.where(probs >= desc[last], w, 0.0)
    return w
