"""Ranks of a tensor-parallel step as threads of one process: `ThreadGroup` stands in for
torch.distributed (broadcast, all_gather_into_tensor, all_reduce, as TPDecode calls them) and
records each collective; `run_ranks` runs a rank function on every thread. A test of many
ranks then takes milliseconds, not the seconds each real process costs."""
import threading

from pagedattn_lab.distributed import decode as decode_module

# How long a rank waits for the others to post a collective before it gives up: a rank that
# raised wakes them at once (ThreadGroup.fail), so only a hang waits this long; a cold kernel
# compile on a loaded 2-core machine, inside another rank's step, must fit in it.
WAIT_SECONDS = 300


class ThreadGroup:
    """torch.distributed's calls for `world` ranks that are threads of this process."""

    def __init__(self, world: int):
        self.world, self.local = world, threading.local()
        self.arrived = threading.Condition()
        self.posted = {}  # (collective's number, rank): its tensor
        self.failed = False    # a rank raised: the others stop waiting, as launch stops them
        self.log = []     # (collective, bytes rank 0 posted)

    def get_rank(self):
        return self.local.rank

    def get_world_size(self):
        return self.world

    def fail(self):
        with self.arrived:
            self.failed = True
            self.arrived.notify_all()

    def _exchange(self, name, tensor):
        rank, n = self.local.rank, self.local.count
        self.local.count += 1
        with self.arrived:
            self.posted[n, rank] = tensor.clone()
            self.arrived.notify_all()
            here = lambda: all((n, r) in self.posted for r in range(self.world))  # noqa: E731
            if not self.arrived.wait_for(lambda: here() or self.failed, timeout=WAIT_SECONDS) \
                    or not here():
                raise ConnectionAbortedError(f"{name}: another rank stopped")
        every = [self.posted[n, r] for r in range(self.world)]
        if rank == 0:
            self.log.append((name, tensor.numel() * tensor.element_size()))
        if len({tuple(t.shape) for t in every}) > 1:   # gloo aborts here, NCCL may hang
            raise RuntimeError(f"{name}: the ranks posted {[tuple(t.shape) for t in every]}")
        return every

    def broadcast(self, tensor, src=0):
        tensor.copy_(self._exchange("broadcast", tensor)[src])

    def all_gather_into_tensor(self, out, tensor):
        import torch
        out.copy_(torch.cat([t.reshape(-1) for t in self._exchange("all_gather", tensor)]))

    def all_reduce(self, tensor):
        every = self._exchange("all_reduce", tensor)
        tensor.copy_(sum(every[1:], every[0].clone()))


def run_ranks(monkeypatch, fn, world, *args, **kwargs):
    """fn(rank, world, *args, **kwargs) on `world` threads: (results, errors, group)."""
    import torch
    group = ThreadGroup(world)
    monkeypatch.setattr(decode_module, "require_torch", lambda: (torch, group))
    results, errors = [None] * world, [None] * world

    def rank_body(rank):
        group.local.rank, group.local.count = rank, 0
        try:
            results[rank] = fn(rank, world, *args, **kwargs)
        except BaseException as exc:   # noqa: BLE001 - handed to the test (an interrupt too:
            errors[rank] = exc         # uncaught, it would end the thread and leave the others
            group.fail()               # waiting, where launch stops every rank)
    threads = [threading.Thread(target=rank_body, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors, group
