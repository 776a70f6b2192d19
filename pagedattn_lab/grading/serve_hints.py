"""Hints for lesson 07's serving loop that name what the loop did unlike the spec's: an
admission (`admission_hint`), a step's company when a request is freed (`unlike_spec`), a
token asked for past a request's end (`past_end`). checks_serve runs the cases."""
from __future__ import annotations

from .report import Mismatch, several_fit


# The mistakes that finish a request a step late (both give the same order and steps).
LATE_HINTS = ["finished sequences were looked for before appending: record and free after "
              "this step's decode (admit, decode, finish).",
              "the sequences admitted in this step got no token: the decode appends one to "
              "every running sequence, those just admitted included."]

# Admission tests that give another order (finish_order's `admit`), with their hints.
PROMPT_ONLY_HINT = ("admit only when the whole request fits, pages(prompt_len + new_tokens): "
                    "the prompt's pages alone leave its new tokens no room.")
ADMIT_MISTAKES = [
    ("promised counts what the running sequences will still take, pages(total) - "
     "pages(held) each: yours counts their whole totals, so the pages they hold (already "
     "out of num_free) count twice.", "whole"),
    ("a request that fits exactly is admitted: pages(prompt_len + new_tokens) <= num_free - "
     "promised (yours refuses it with <).", "strict"),
    (PROMPT_ONLY_HINT, "prompt"),
    ("promised counts pages(total) - pages(held) for each running sequence: yours counts "
     "pages(total - held), as if its tokens still to come started a page of their own; they "
     "fill the free slots of the last page it holds first.", "left"),
]
LIFO_HINT = ("the queue was served from its back, the latest request first (waiting.pop(), or "
             "waiting[-1]): admit first come, first served, the head waiting[0] first "
             "(waiting.popleft()), while it fits.")
_ADMIT_HINTS = {admit: hint for hint, admit in ADMIT_MISTAKES}
# (its order is that of other mistakes no finish_order models: only an admission names it)
_PROMPT_HELD_HINT = ("promised counts pages(total) - pages(held), held what the sequence holds "
                     "now, pages(cache.seq_len(seq_id)): yours takes the prompt's pages, as if "
                     "the sequence had not grown since its admission, so its tokens decoded "
                     "since count twice.")
_PER_SEQUENCE_HINT = ("promised counts what each running sequence will still take, "
                      "pages(total) - pages(held), not one page per running sequence.")
_NO_PROMISE_HINT = ("admit when the request fits in the pages left free after the pages the "
                    "running sequences will still take: pages(prompt_len + new_tokens) <= "
                    "num_free - promised, not <= num_free alone (the running sequences then "
                    "run out of pages mid-generation).")
_STALE_PROMISE_HINT = ("promised counts the requests admitted earlier in this same step too: "
                       "work it out again after each admission, not once per step.")
_ONE_PER_STEP_HINT = ("admission goes on within a step while the request at the head of the "
                      "queue fits: yours admitted one in this step and stopped (keep admitting "
                      "until one does not fit, or nothing waits).")


def admission_hint(i: int, requests, running: dict, num_free: int, pages,
                   admitted: bool) -> str:
    """The hint for request `i` admitted (`admitted`; its prompt appended to a new sequence)
    or left waiting at the head of the queue through a step's decode, with `num_free` pages
    free and `running` (request -> tokens held) beside it (`pages(n)`: the pages n tokens
    take), where the spec's loop does the other and known mistakes do this; else "". What
    the loop did, seen on the first case where it does it, not an order (which other
    mistakes give too) seen at the end."""
    promised = sum(pages(sum(requests[j])) - pages(n) for j, n in running.items())
    room, need = num_free - promised, pages(sum(requests[i]))
    per_sequence = need <= num_free - len(running)
    if admitted and need > room:
        # (those admitted in this step hold just their prompt: none has had a decode yet)
        earlier = sum(pages(sum(requests[j])) - pages(n) for j, n in running.items()
                      if n != requests[j][0])
        fits = [PROMPT_ONLY_HINT] * (pages(requests[i][0]) <= room) + \
            [_PER_SEQUENCE_HINT] * per_sequence + \
            [_STALE_PROMISE_HINT] * (earlier < promised and need <= num_free - earlier) + \
            [_NO_PROMISE_HINT] * (need <= num_free)
        # (no known mistake admits so: the admission is still the spec's first departure)
        fits = fits or [ADMIT_HINT]
        what = "was admitted"
    elif not admitted and need <= room:
        whole = sum(pages(sum(requests[j])) for j in running)
        left = sum(pages(sum(requests[j]) - n) for j, n in running.items())
        from_prompt = sum(pages(sum(requests[j])) - pages(requests[j][0]) for j in running)
        fits = [_ADMIT_HINTS["whole"]] * (need > num_free - whole) + \
            [_ADMIT_HINTS["left"]] * (need > num_free - left) + \
            [_PROMPT_HELD_HINT] * (need > num_free - from_prompt) + \
            [_ADMIT_HINTS["strict"]] * (need == room) + [_PER_SEQUENCE_HINT] * (not per_sequence)
        # admitted in this step: those holding just their prompt (before the step's decode).
        # One such beside some admitted before, or among the mistakes that give this
        # admission too (a loop that serves requests one at a time, whole, never runs two:
        # unlike_spec names that mistake)
        now = sum(n == requests[j][0] for j, n in running.items())
        fits += [_ONE_PER_STEP_HINT] * (0 < now and (now < len(running) or bool(fits)))
        what = "waited at the head of the queue through a step"
    else:
        return ""
    if not fits:
        return ""
    return (f"request {i} {what} with {num_free} pages free and {promised} promised to the "
            f"running sequences ({room} to spare), and its {sum(requests[i])} tokens take "
            f"{need}: " + several_fit(fits, "admission"))


def prefill_hint(i: int, appended: int, prompt_len: int) -> str:
    """The hint for a loop whose admission appended `appended` of request `i`'s prompt tokens,
    the rest left to the decode (one a step), where the order or the company it shows is
    what such a loop makes."""
    longer = "prompt_len - 1 steps longer" if appended == 1 else \
        "one step longer per prompt token held back"
    return (f"request {i} was admitted with {appended} of its {prompt_len} prompt tokens, and "
            "the decode appended the rest one token a step, as if the model were generating "
            f"its prompt (every request then runs {longer}): admission "
            "appends the whole prompt at once, cache.append(seq_id, *kv_for(i, 0, "
            "prompt_len)), and each step then appends one new token to every running sequence.")


ADMIT_HINT = ("admit a request only when the pool has room for all its tokens: "
              "ceil((prompt_len + new_tokens) / page_size) pages free, after the pages the "
              "running sequences will still take (those admitted earlier in this same step "
              "included).")


def past_end(call, tokens) -> Mismatch:
    """The Mismatch for a kv_for call that asked for tokens past its request's end."""
    i, start, n = call
    total = len(tokens[i])
    if start == total:
        hint = (f"request {i} already held all its {total} tokens (prompt_len + new_tokens), "
                "yet the loop asked for one more: the decode appends only to a sequence that "
                "still needs a token (a request with no new tokens is whole once admitted). "
                "kv_for gave back nothing here; a model would have made a token the request "
                "never asked for.")
    else:
        hint = (f"kv_for(i, start, n) gives tokens start..start+n-1 of request i, and request "
                f"{i} has prompt_len + new_tokens = {total}: ask only for tokens it has.")
    return Mismatch(f"kv_for({i}, {start}, {n}) asked for tokens past the end of request {i} "
                    f"({total} tokens)", hint, f"tokens below {total}",
                    f"tokens {start}..{start + n - 1}")


def misplaced_tokens(call, held: int) -> Mismatch:
    """The Mismatch for the block of kv_for `call` appended to a sequence of `held` tokens
    where it does not go: tokens count from 0, so the next one is token `held`."""
    i, start, n = call
    where = (f"the prompt is tokens 0..prompt_len-1: kv_for(i, 0, prompt_len), from token 0, "
             f"not {start}." if held == 0 else
             f"a sequence of {held} tokens holds tokens 0..{held - 1} (they count from 0), so "
             f"its next token is token {held}: kv_for(i, cache.seq_len(seq_id), 1), not "
             f"token {start}.")
    return Mismatch(f"kv_for({i}, {start}, {n}) was appended to request {i}'s sequence of "
                    f"{held} tokens", where, f"kv_for({i}, {held}, {n})",
                    f"kv_for({i}, {start}, {n})")


def unlike_spec(i: int, got: dict, spec, tokens, admission: str = "",
                overfull: str = "") -> list[Mismatch]:
    """[] if the requests running beside request `i` when it was freed (`got`: request ->
    tokens held) are those of the spec's step that finishes it (`spec`: finish_order's
    (before, after) its decode; one decoded this step already or not yet, one finishing in
    the same step freed already or not yet), else [the Mismatch saying so]. `admission`:
    the hint of an admission seen unlike the spec's (the loop's first departure: named before
    the late finishes it leads to);
    `overfull`: that hint where the admission took a request that did not fit (what every
    request running ahead of the spec's steps then follows from)."""
    before, after, admitted = spec
    if all(j in before and before[j] <= n <= after[j] for j, n in got.items()) and \
            all(j in got for j, n in after.items() if n < len(tokens[j])):
        return []

    def listed(running):
        return ", ".join(f"request {j} with {n} tokens" for j, n in sorted(running.items())) \
            or "no other request"
    ahead = [j for j, n in sorted(got.items()) if j in after and n > after[j]]
    # (requests are admitted in arrival order: one past every request the spec runs here,
    # the spec has not admitted yet)
    early = [j for j in sorted(got) if j > max([i, *before, *after])]
    if overfull:
        hint = overfull
    elif admission:   # (the loop left waiting a request the spec admits: the first departure)
        hint = admission
    elif early:
        hint = (f"request {early[0]} was running already, though the pool has no room for it "
                "yet: " + ADMIT_HINT)
    elif ahead:   # no token when admitted lags a request behind those admitted before it only
        lagged = any(admitted[j] < admitted[i] for j in ahead)
        hint = (f"request {i} finished a step late (request {ahead[0]} had had its next token "
                f"already); " + several_fit(LATE_HINTS if lagged else LATE_HINTS[:1], "steps"))
    else:
        hint = ((f"request {i} ran alone: " if not got and after else "") +
                "the requests share the steps: each step admits what fits, appends one token "
                "to every running sequence, then frees those complete, so the order comes "
                "out of the loop (this is checked on the cache, not only on the list "
                "returned).")
    return [Mismatch(f"when request {i} was freed, the cache held {listed(got)} beside it",
                     hint, listed(after), listed(got))]
