"""Workbook 07's serve loop as a learner writes it, with the admission test (and the page
count) swapped for a mistake's: the hint tests of several hunts submit it."""
from collections import deque
from dataclasses import dataclass


@dataclass
class Admission:
    """What the loop knows when it decides on the head of the queue (all in pages): its whole
    request's `total` and its prompt's `prompt`, the pool's `free` pages, the `running`
    sequences, and what they still need (`left`) or need in all (`whole`); `admitted`: the
    requests admitted before it in this step."""
    total: int
    prompt: int
    free: int
    running: int
    left: int
    whole: int
    admitted: int = 0


def spec_admission(a: Admission) -> bool:
    """The spec's test: the head's whole request fits beside what the running ones still
    need."""
    return a.total <= a.free - a.left


def ceil_pages(n: int, page_size: int) -> int:
    return -(-n // page_size)


def serve_loop(admit, pages_for=ceil_pages, admitted_tokens=None, piece=None,
               decode_at=lambda held: held, prompt_at=0):
    """The solution's serve, admitting the head of the queue while `admit(Admission)` holds;
    `pages_for(tokens, page_size)` counts pages (the spec's ceil by default);
    `admitted_tokens`: how many of its prompt's tokens an admitted request appends (None:
    all, the spec's prefill; a function: of the prompt's length; the rest then come one a
    step, as decodes do), appended `piece`
    tokens a call (None: in one call); each decode asks kv_for for token
    `decode_at(seq_len)` and the prompt is read from token `prompt_at` (the spec's: the
    next token, from token 0)."""
    def serve(cache, requests, kv_for):
        def pages(n):
            return pages_for(n, cache.page_size)
        waiting, running, finished = deque(range(len(requests))), {}, []
        while waiting or running:
            admitted = 0
            while waiting:
                i = waiting[0]
                left = sum(pages(sum(requests[j])) - pages(cache.seq_len(s))
                           for j, s in running.items())
                whole = sum(pages(sum(requests[j])) for j in running)
                if not admit(Admission(pages(sum(requests[i])), pages(requests[i][0]),
                                       cache.allocator.num_free, len(running), left, whole,
                                       admitted)):
                    break
                waiting.popleft()
                running[i] = cache.add_sequence()
                admitted += 1
                prompt_len = requests[i][0]
                n = (admitted_tokens(prompt_len) if callable(admitted_tokens)
                     else admitted_tokens or prompt_len)
                for start in range(0, n, piece or n):
                    cache.append(running[i], *kv_for(i, prompt_at + start,
                                                     min(piece or n, n - start)))
            for i, seq_id in list(running.items()):
                if cache.seq_len(seq_id) < sum(requests[i]):
                    cache.append(seq_id, *kv_for(i, decode_at(cache.seq_len(seq_id)), 1))
                if cache.seq_len(seq_id) == sum(requests[i]):
                    cache.free_sequence(seq_id)
                    del running[i]
                    finished.append(i)
        return finished
    return serve
