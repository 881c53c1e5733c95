"""The trainer's inbox is bounded by the bytes of the updates in it, not only
their count, so a trainer that falls behind cannot pile up gigabytes."""

from __future__ import annotations

import queue
import threading
import time

import numpy as np
import pytest

from peer.strategies import Incoming
from peer.trainer import Inbox


def update(nbytes: int) -> Incoming:
    return Incoming("GRADIENT", "n1", [np.zeros(nbytes // 4, np.float32)])


def test_an_update_that_would_pass_the_byte_bound_waits_and_is_refused():
    inbox = Inbox(maxsize=256, max_bytes=100)
    inbox.put(update(60), timeout=0.1)
    with pytest.raises(queue.Full):
        inbox.put(update(60), timeout=0.1)
    assert inbox.qsize() == 1 and inbox.bytes == 60
    inbox.put(update(40), timeout=0.1)  # fits exactly
    assert inbox.bytes == 100


def test_taking_an_update_out_lets_a_waiting_one_in():
    inbox = Inbox(maxsize=256, max_bytes=100)
    inbox.put(update(80))
    done = threading.Event()

    def put_second() -> None:
        inbox.put(update(80), timeout=5)
        done.set()

    thread = threading.Thread(target=put_second)
    thread.start()
    assert not done.wait(0.2)  # held back by the byte bound
    assert inbox.get(timeout=1).arrays[0].nbytes == 80
    assert done.wait(5)
    thread.join()
    assert inbox.qsize() == 1 and inbox.bytes == 80


def test_an_update_larger_than_the_bound_gets_into_an_empty_inbox():
    inbox = Inbox(maxsize=256, max_bytes=100)
    inbox.put(update(400), timeout=0.1)
    assert inbox.bytes == 400
    with pytest.raises(queue.Full):
        inbox.put(update(4), timeout=0.1)
    inbox.get_nowait()
    assert inbox.bytes == 0


def test_requests_carry_no_payload_and_the_count_bound_still_holds():
    inbox = Inbox(maxsize=2, max_bytes=100)
    inbox.put(update(100))
    inbox.put(object())  # a request to run on the trainer's thread
    assert inbox.bytes == 100
    with pytest.raises(queue.Full):
        inbox.put(object(), timeout=0.1)


def test_inbox_bound_defaults_to_four_updates_of_the_model():
    from peer.codec import TensorSpec
    from peer.daemon import INBOX_MIN_BYTES, inbox_bytes

    wide = [TensorSpec("w", (3072, 3072)), TensorSpec("b", (3072,))]
    update = (3072 * 3072 + 3072) * 4
    assert inbox_bytes(0, wide) == 4 * update  # ~151 MB, not 1 GB of stale gradients
    assert inbox_bytes(0, [TensorSpec("w", (10, 10))]) == INBOX_MIN_BYTES
    assert inbox_bytes(500, wide) == 500_000_000  # --inbox-mb given


def test_a_request_for_the_training_thread_is_not_held_back_by_the_update_bound():
    """A checkpoint or Pull must not wait (and fail) because updates fill the inbox."""
    from concurrent.futures import Future

    from peer.trainer import Inbox, _Request

    inbox = Inbox(2, 1 << 30)
    inbox.put(object())
    inbox.put(object())  # at its count bound
    started = time.monotonic()
    inbox.put(_Request(lambda: None, Future()), timeout=0.5)
    assert time.monotonic() - started < 0.2 and inbox.qsize() == 3
