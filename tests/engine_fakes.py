"""A stand-in for the engine's K/V arrays, for bookkeeping tests without a model."""
import numpy as np


class FakeStore:
    """Pages of token ids: slot s holds the token whose K/V the model would have written there.
    Same methods as `KVStore` (copy_page, swap_out, swap_in), plus write and read."""

    def __init__(self, num_pages, page_size, num_host_pages=0):
        self.page_size = page_size
        self.slots = np.full((num_pages, page_size), -1)
        self.host = np.full((max(num_host_pages, 1), page_size), -1)

    def copy_page(self, src, dst):
        self.slots[dst] = self.slots[src]

    def swap_out(self, pages, host_pages):
        self.host[host_pages] = self.slots[pages]

    def swap_in(self, host_pages, pages):
        self.slots[pages] = self.host[host_pages]

    def _slot(self, req, pos):
        return req.pages[pos // self.page_size], pos % self.page_size

    def write(self, req, start, stop):
        for pos in range(start, stop):
            self.slots[self._slot(req, pos)] = req.tokens(pos, pos + 1)[0]

    def read(self, req):
        return [int(self.slots[self._slot(req, pos)]) for pos in range(req.num_computed_tokens)]


def assert_private(kv, req, start, stop):
    """Copy on write: the pages that tokens start..stop-1 go to are held by this request
    only and are not offered by the prefix cache."""
    ps = kv.page_size
    for i in range(start // ps, -(-stop // ps)):
        page = req.pages[i]
        assert kv.pool.ref_cnt[page] == 1, f"writing into page {page} held by others"
        assert kv.pool.page_hash[page] is None, f"writing into cached page {page}"
