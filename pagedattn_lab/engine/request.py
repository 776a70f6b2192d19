"""A request as the engine sees it: its tokens, how many are in the cache, and its pages."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ..validate import check_bool, check_int, check_int_list
from ..validate_kinds import is_finite_number, is_number, python_number


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens, and when to stop.

    temperature 0 is greedy (argmax). max_tokens caps the output; the engine learns the real
    length only when the request stops (any of the model's end-of-sequence tokens, one of
    stop_token_ids, or max_tokens), never in advance. ignore_eos: run on past the
    end-of-sequence tokens (not stop_token_ids) to max_tokens. seed: the sampling stream of
    this request (None: the engine's seed and the request id), so sampled tokens do not
    depend on how requests were batched.
    return_logits: keep the float32 logits of every generated token (for checks).
    top_k, top_p: vLLM's filters, applied after the temperature, top-k first: keep the k most
    likely tokens (0 or -1: all), then the fewest most likely whose probability reaches top_p
    (1.0: all; at least one). Tokens tied at either cut are all kept (the filters look at the
    probabilities only, never at token ids). Greedy (temperature 0) ignores both, as vLLM.
    stop_token_ids: a generated token among them ends the request ("stop"), ignore_eos or
    not, and stays in the output (vLLM's default); stored as a tuple.
    """
    max_tokens: int = 16
    temperature: float = 0.0
    ignore_eos: bool = False
    seed: int | None = None
    return_logits: bool = False
    top_k: int = 0
    top_p: float = 1.0
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self):
        # each stored as a Python number, as EngineConfig stores its own (a summary's JSON)
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 - frozen
        set_("max_tokens", check_int(self.max_tokens, "max_tokens", minimum=1))
        t = self.temperature
        if not is_number(t):
            raise TypeError(f"temperature: expected a number >= 0, got {t!r} ({type(t).__name__})")
        if not (is_finite_number(t) and t >= 0):   # inf would flatten every distribution
            raise ValueError(f"temperature: expected a finite number >= 0, got {t!r}")
        set_("temperature", python_number(t))
        set_("ignore_eos", check_bool(self.ignore_eos, "ignore_eos"))
        set_("return_logits", check_bool(self.return_logits, "return_logits"))
        if self.seed is not None:   # checked now, not when the first token is sampled
            set_("seed", check_int(self.seed, "seed", minimum=0))
        set_("top_k", check_int(self.top_k, "top_k", minimum=-1))   # (0 and -1: off)
        p = self.top_p
        if not is_number(p):
            raise TypeError(f"top_p: expected a number in (0, 1], got {p!r} ({type(p).__name__})")
        if not (is_finite_number(p) and 0 < p <= 1):   # 0 would keep no token
            raise ValueError(f"top_p: expected a number in (0, 1], got {p!r}")
        set_("top_p", python_number(p))
        # (a tuple keeps the params hashable; the vocabulary is the engine's to check)
        stop = () if self.stop_token_ids is None else self.stop_token_ids
        set_("stop_token_ids", tuple(check_int_list(stop, "stop_token_ids", "token id",
                                                    minimum=0)))


class Status(enum.Enum):
    WAITING = "waiting"      # not started, or preempted by recompute (cache dropped)
    RUNNING = "running"      # has pages on the device
    SWAPPED = "swapped"      # preempted by swap: its pages are in host memory
    FINISHED = "finished"


@dataclass(eq=False)
class Request:
    rid: int
    prompt_ids: list[int]
    params: SamplingParams
    output_ids: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    num_computed_tokens: int = 0      # tokens whose K/V are in this request's pages
    pages: list[int] = field(default_factory=list)
    block_hashes: list[bytes] = field(default_factory=list)  # of its full blocks, in order
    num_registered_blocks: int = 0    # its first pages already offered to the prefix cache
    host_pages: list[int] = field(default_factory=list)      # while swapped
    num_preemptions: int = 0
    num_cached_tokens: int = 0        # prompt tokens in the prefix cache at its first admission
    # Its tokens at its latest admission: the prompt, or after a preemption by recompute the
    # prompt + outputs. Chunks below it are prefill (the last too, even of one token: vLLM's
    # prefill stage lasts until the whole sequence is computed); a token past it is a decode.
    prefill_len: int = 0
    # The most tokens it had computed before a preemption by recompute dropped them: running
    # tokens below it again is recomputing them (those its prefix hits serve are not).
    num_dropped_tokens: int = 0
    logits: list = field(default_factory=list)
    finish_reason: str | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    def save(self) -> tuple:
        """What a step may change, for `restore` (lists copied; the ones only appended to,
        by their lengths)."""
        return (self.status, self.num_computed_tokens, list(self.pages),
                self.num_registered_blocks, list(self.host_pages), self.num_preemptions,
                self.num_cached_tokens, self.prefill_len, self.num_dropped_tokens,
                self.finish_reason, len(self.output_ids), len(self.logits), len(self.block_hashes))

    def restore(self, saved: tuple) -> None:
        (self.status, self.num_computed_tokens, pages, self.num_registered_blocks, host_pages,
         self.num_preemptions, self.num_cached_tokens, self.prefill_len,
         self.num_dropped_tokens, self.finish_reason, outputs, logits, hashes) = saved
        self.pages, self.host_pages = list(pages), list(host_pages)
        del self.output_ids[outputs:], self.logits[logits:], self.block_hashes[hashes:]

    def tokens(self, start: int, stop: int) -> list[int]:
        """Tokens start..stop-1 of prompt + output, without joining the two lists."""
        p = len(self.prompt_ids)
        if stop <= p:
            return self.prompt_ids[start:stop]
        if start >= p:
            return self.output_ids[start - p:stop - p]
        return self.prompt_ids[start:] + self.output_ids[:stop - p]


def empty_prompt_error(rid) -> ValueError:
    """The one refusal of a request without a token, whoever meets it first (the scheduler's
    add, the KV manager's prefix lookup): the last prompt token's logits pick the first
    output token, so a request needs one."""
    return ValueError(f"req.prompt_ids: request {rid} has no token; expected a prompt of at "
                      f"least one token")
