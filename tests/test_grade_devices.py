"""CuPy arrays cross the grader's channel as CuPy arrays, and come back when changed in place.

On a GPU machine a check hands the learner's code CuPy arrays (the manager's step inputs on
its device), as the notebook does. Under the grader those arrays cross a process boundary:
if they arrived as NumPy, a learner's GPU code would get what the notebook never gives it
(and one wrong answer that mixes the two got another message than in the notebook); if an
in-place change did not come back, a `q *= scale` on the GPU would go unseen. Here a stand-in
for CuPy (an array type of a module named cupy...) plays the GPU's part on the CPU; the same
path runs with CuPy itself in the GPU test.
"""
import socket
import threading
import types

import numpy as np
import pytest

from pagedattn_lab.grading import proxies, remote, remote_errors, wire
from pagedattn_lab.grading.channel import Channel
from pagedattn_lab.grading.wire import ChannelClosed


class FakeDeviceArray:
    """What the grader's channel reads of a cupy.ndarray: get(), shape, dtype, item writes."""

    def __init__(self, data):
        self.data = np.array(data)

    __cuda_array_interface__ = {}   # marks a device array, as CuPy's does

    @property
    def shape(self):
        return self.data.shape

    @shape.setter
    def shape(self, shape):   # as CuPy's: a reshape in place, no copy
        self.data.shape = shape

    def reshape(self, shape):
        return FakeDeviceArray(self.data.reshape(shape))
    dtype = property(lambda self: self.data.dtype)
    size = property(lambda self: self.data.size)

    def get(self):
        return self.data.copy()

    def __setitem__(self, key, value):
        self.data[key] = value.data if isinstance(value, FakeDeviceArray) else value

    def __iter__(self):   # as a cupy.ndarray's: item by item
        return iter(self.data)

    def __imul__(self, factor):
        self.data *= factor
        return self


FakeDeviceArray.__module__ = "cupy._fake"
FAKE_CUPY = types.SimpleNamespace(asarray=lambda a: a if isinstance(a, FakeDeviceArray)
                                  else FakeDeviceArray(a))


@pytest.fixture
def fake_gpu(monkeypatch):
    monkeypatch.setattr(wire, "gpu_available", lambda: True)
    monkeypatch.setattr(wire, "cupy_module", lambda: FAKE_CUPY)
    monkeypatch.setattr(proxies, "array_module", lambda *arrays: FAKE_CUPY)


def crossed(value):
    tree, blobs = wire.encode(value, remote_errors.no_handles)
    return tree, wire.decode(tree, blobs, remote_errors.no_deref)


def test_a_device_array_crosses_as_a_device_array(fake_gpu):
    values = np.arange(6, dtype=np.float16).reshape(2, 3)
    tree, (on_device, on_host) = crossed([FakeDeviceArray(values), values])
    assert tree[0]["dev"] == "cuda" and "dev" not in tree[1]
    assert isinstance(on_device, FakeDeviceArray) and on_device.dtype == np.float16
    assert on_device.get().tolist() == values.tolist()
    assert type(on_host) is np.ndarray and on_host.tolist() == values.tolist()


def test_without_a_gpu_the_receiver_gets_numpy(fake_gpu, monkeypatch):
    monkeypatch.setattr(wire, "gpu_available", lambda: False)
    _, back = crossed(FakeDeviceArray([1.0, 2.0]))
    assert type(back) is np.ndarray and back.tolist() == [1.0, 2.0]


def test_the_device_mark_on_a_scalar_or_on_text_is_ignored(fake_gpu):
    """A sender may mark anything: what CuPy cannot hold (strings) arrives as NumPy, not as
    an error out of cupy.asarray in the judge."""
    for value in (np.float32(1.5), np.array(["a", "b"])):
        tree, blobs = wire.encode(value, remote_errors.no_handles)
        tree["dev"] = "cuda"
        back = wire.decode(tree, blobs, remote_errors.no_deref)
        assert type(back) is type(value) and np.array_equal(back, value)


def test_copy_back_writes_into_device_and_host_arrays(fake_gpu):
    target = FakeDeviceArray(np.zeros(3, dtype=np.float32))
    proxies.copy_back(target, FakeDeviceArray(np.array([1, 2, 3], dtype=np.float32)))
    assert target.get().tolist() == [1, 2, 3]
    host = np.zeros(3, dtype=np.float32)
    proxies.copy_back(host, FakeDeviceArray(np.array([4, 5, 6], dtype=np.float32)))
    assert host.tolist() == [4, 5, 6]
    flat = np.zeros(6)   # the other side's code set its shape: so does the copy back
    proxies.copy_back(flat, np.arange(6.0).reshape(2, 3))
    assert flat.shape == (2, 3) and flat.tolist() == [[0, 1, 2], [3, 4, 5]]
    on_device = FakeDeviceArray(np.zeros(6))
    proxies.copy_back(on_device, FakeDeviceArray(np.arange(6.0).reshape(3, 2)))
    assert on_device.shape == (3, 2) and on_device.get().sum() == 15
    view = np.zeros((4, 6))[:, :3]   # cannot take another shape in place: the values still
    proxies.copy_back(view, np.ones((4, 3, 1)))   # arrive
    assert view.shape == (4, 3) and view.sum() == 12
    items = [np.zeros(2)]   # an item the learner moved to the GPU is a new item there
    before = items[0]
    proxies.copy_back(items, [FakeDeviceArray(np.ones(2))])
    assert isinstance(items[0], FakeDeviceArray) and before.tolist() == [0, 0]
    nested = [FakeDeviceArray(np.zeros(2)), 7]
    first = nested[0]
    proxies.copy_back(nested, [FakeDeviceArray(np.ones(2)), 8])
    assert nested[0] is first and first.get().tolist() == [1, 1] and nested[1] == 8


def call_from_the_judge(impl, *args):
    """Run impl(*args) in a learner-side peer, called through the judge's stand-in for it,
    as a check calls the learner's code; returns the judge's args after the call."""
    judge_end, learner_end = socket.socketpair()
    seen = []

    def take(peer, header, blobs):
        fields = wire.decode(header.get("fields"), blobs, peer._deref())
        seen.append(fields["args"][0](*args))
        return None

    judge = remote.Peer(Channel(judge_end), strict=True, call_timeout=30,
                        services={"take": take})
    learner = remote.Peer(Channel(learner_end), strict=False)

    def learner_side():
        try:
            learner.request("take", args=[impl])
        finally:
            learner.channel.close()

    thread = threading.Thread(target=learner_side)
    thread.start()
    with pytest.raises(ChannelClosed):
        judge.listen(idle_timeout=30)
    thread.join(30)
    return seen


def test_the_learner_gets_device_arrays_and_in_place_changes_come_back(fake_gpu):
    q = FakeDeviceArray(np.array([1.0, 2.0], dtype=np.float32))
    pages = np.array([3, 4], dtype=np.int32)
    got = []

    def step(q_in, pages_in):
        got.append((type(q_in), type(pages_in)))
        q_in *= 0.5               # the classic mistake: scales the caller's q
        pages_in[0] = 9
        return q_in

    returned = call_from_the_judge(step, q, pages)
    assert got == [(FakeDeviceArray, np.ndarray)]
    assert q.get().tolist() == [0.5, 1.0] and pages.tolist() == [9, 4]
    assert isinstance(returned[0], FakeDeviceArray) and returned[0].get().tolist() == [0.5, 1.0]


def test_the_learner_can_hand_the_judge_device_arrays(fake_gpu):
    """A device array the learner passes to one of the judge's objects stays an array (a
    deque or a generator goes as a list, an array must not)."""
    received = []

    class Recorder:   # stands for a judge's object a learner calls (a cache, kv_for)
        def __call__(self, k):
            received.append(k)

    Recorder.__module__ = "pagedattn_lab.stand_in"   # what the grader shares: its own kinds
    call_from_the_judge(lambda record: record(FakeDeviceArray(np.array([2.0]))), Recorder())
    assert len(received) == 1 and isinstance(received[0], FakeDeviceArray)
    assert received[0].get().tolist() == [2.0]


@pytest.mark.gpu
def test_cupy_arrays_cross_and_come_back_on_the_gpu():
    import cupy as cp
    q = cp.asarray(np.array([1.0, 2.0], dtype=np.float32))
    got = []

    def step(q_in):
        got.append(type(q_in))
        q_in *= 0.5
        q_in.shape = (2, 1)
        return q_in * 2

    returned = call_from_the_judge(step, q)
    assert got == [cp.ndarray] and q.shape == (2, 1) and q.get().tolist() == [[0.5], [1.0]]
    assert isinstance(returned[0], cp.ndarray) and returned[0].get().tolist() == [[1.0], [2.0]]
