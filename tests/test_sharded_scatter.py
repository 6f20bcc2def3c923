"""``trainer=sharded``'s scatter: a node sends its n − 1 slices one at a time, to rank + 1,
rank + 2, … (so in round r every owner receives from one node only, as the cost model's
``sharded_iteration_times`` assumes); each owner's slice is the right piece of the message."""

from __future__ import annotations

import queue
from types import SimpleNamespace

import torch

from agc_pipeline.training import sharded_node
from agc_pipeline.training.sharded_node import ShardNode


class _Work:
    def __init__(self, log: list[str], dst: int) -> None:
        self.log, self.dst = log, dst

    def wait(self) -> None:
        self.log.append(f"done {self.dst}")


def _node(n: int, rank: int, width: int) -> ShardNode:
    node = object.__new__(ShardNode)  # no process group: only _send is exercised
    node.rt = SimpleNamespace(n=n, rank=rank, layout=SimpleNamespace(width=width),
                              dtype=torch.float32)
    node.inbox = queue.Queue()
    node.p2p = None
    return node


def test_slices_leave_one_at_a_time_in_rotated_order(monkeypatch) -> None:
    log: list[str] = []
    sent: dict[int, torch.Tensor] = {}

    def isend(tensor: torch.Tensor, dst: int, group: object = None) -> _Work:
        assert not log or log[-1].startswith("done"), "a slice was posted before the last completed"
        log.append(f"send {dst}")
        sent[dst] = tensor.clone()
        return _Work(log, dst)

    monkeypatch.setattr(sharded_node.dist, "isend", isend)
    n, rank, width = 5, 3, 4
    message = torch.arange(1.0, n * width - 1)  # ⌈d/m⌉ = 18 < n·W = 20: padded
    _node(n, rank, width)._send(7.0, message)
    assert log == [x for dst in (4, 0, 1, 2) for x in (f"send {dst}", f"done {dst}")]
    padded = torch.zeros(n * width)
    padded[:message.numel()] = message
    for dst, frame in sent.items():
        assert frame[0] == 7.0
        assert torch.equal(frame[1:], padded.view(n, width)[dst])


def test_own_slice_goes_to_the_inbox_before_the_sends(monkeypatch) -> None:
    order: list[str] = []
    node = _node(3, 0, 2)

    class Inbox(queue.Queue):
        def put(self, item, *args, **kwargs) -> None:
            order.append("inbox")
            super().put(item, *args, **kwargs)

    node.inbox = Inbox()
    monkeypatch.setattr(sharded_node.dist, "isend",
                        lambda tensor, dst, group=None: order.append(f"send {dst}") or
                        SimpleNamespace(wait=lambda: None))
    node._send(2.0, torch.ones(6))
    assert order == ["inbox", "send 1", "send 2"]
    j, t, values = node.inbox.get_nowait()
    assert (j, t) == (0, 2) and torch.equal(values, torch.ones(2))
