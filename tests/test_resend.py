"""Summable updates (gradients, deltas, commits) a failed Push stream carried
are sent again, and arrive exactly once: the receiver drops a resent update
it has delivered and takes one it has not. A lost commit would leave one
replica of the center apart from the others for the rest of the run."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from dasgd.v1 import peer_pb2
from peer import codec, transport
from peer.strategies.base import GRADIENT
from peer.transport import (
    CODEC_TO_WIRE,
    OutboundMessage,
    Outbox,
    UpdateInfo,
    push_method,
    specs_to_wire,
)
from tests.conftest import wait_until
from tests.netfault import CuttableProxy
from tests.test_transport import SPECS, UNPACED, serving_node, values


@pytest.fixture
def through_proxy() -> Iterator[tuple[Outbox, CuttableProxy, str, list]]:
    with serving_node() as (address, node):
        proxy = CuttableProxy(address)
        outbox = Outbox("run", "me", "a:1", grpc.insecure_channel, SPECS, **UNPACED)
        outbox.set_neighbors({"receiver": proxy.address})
        try:
            yield outbox, proxy, address, node.delivered
        finally:
            outbox.close()
            proxy.close()


def fills(delivered: list) -> list[float]:
    return [float(update.arrays[0].flat[0]) for update in delivered]


def test_updates_a_cut_connection_carried_are_sent_again_and_arrive_once(through_proxy):
    outbox, proxy, _, delivered = through_proxy
    (sender,) = outbox.senders()
    outbox.send(GRADIENT, values(1.0), {"me": 1})
    wait_until(lambda: len(delivered) == 1, 10)  # arrived, not yet confirmed
    proxy.swallow.set()
    outbox.send(GRADIENT, values(2.0), {"me": 2})
    wait_until(lambda: sender.stats.sent == 2, 10)  # on the wire, lost on the way
    time.sleep(0.3)
    assert fills(delivered) == [1.0]
    proxy.cut()
    # The stream finds its connection gone when it next sends.
    outbox.send(GRADIENT, values(3.0), {"me": 3})
    wait_until(lambda: len(delivered) == 3, 15)
    time.sleep(0.3)
    # 2 and 3 arrived once sent again; 1, sent again too, was dropped.
    assert fills(delivered) == [1.0, 2.0, 3.0]
    assert [update.clock for update in delivered] == [{"me": 1}, {"me": 2}, {"me": 3}]
    assert sender.stats.resent == 3 and sender.stats.dropped == 0


def test_while_the_network_is_away_updates_are_sent_again_until_it_returns(through_proxy):
    outbox, proxy, receiver, delivered = through_proxy
    (sender,) = outbox.senders()
    outbox.send(GRADIENT, values(1.0), {"me": 1})
    wait_until(lambda: len(delivered) == 1, 10)
    proxy.swallow.set()
    outbox.send(GRADIENT, values(2.0), {"me": 2})
    wait_until(lambda: sender.stats.sent == 2, 10)
    proxy.close()  # nothing listens there now: every new stream fails
    outbox.send(GRADIENT, values(3.0), {"me": 3})
    wait_until(lambda: sender.stats.errors >= transport.MAX_RESENDS + 2, 30)
    assert fills(delivered) == [1.0]
    back = CuttableProxy(receiver, port=proxy.port)  # the network returns
    try:
        wait_until(lambda: len(delivered) == 3, 30)
        time.sleep(0.3)
        assert fills(delivered) == [1.0, 2.0, 3.0]
        assert sender.stats.dropped == 0  # UNAVAILABLE: kept, however many tries
    finally:
        back.close()


def test_a_stream_ends_to_confirm_what_it_carried(monkeypatch):
    monkeypatch.setattr(transport, "MAX_UNCONFIRMED_UPDATES", 2)
    with serving_node() as (address, node):
        outbox = Outbox("run", "me", "a:1", grpc.insecure_channel, SPECS, **UNPACED)
        outbox.set_neighbors({"receiver": address})
        (sender,) = outbox.senders()
        try:
            for fill in range(1, 6):
                outbox.send(GRADIENT, values(float(fill)), {"me": fill})
                wait_until(lambda fill=fill: len(node.delivered) == fill, 10)
            # Two streams of two were confirmed; the fifth is on the third.
            wait_until(lambda: len(sender._unconfirmed) == 1, 10)
            assert fills(node.delivered) == [1.0, 2.0, 3.0, 4.0, 5.0]
        finally:
            outbox.close()


def test_an_update_refused_as_invalid_is_not_sent_again():
    with serving_node() as (address, node):
        node.specs = [SPECS[0]]  # another workload: every update is refused
        outbox = Outbox("run", "me", "a:1", grpc.insecure_channel, SPECS, **UNPACED)
        outbox.set_neighbors({"receiver": address})
        (sender,) = outbox.senders()
        try:
            outbox.send(GRADIENT, values(1.0), {"me": 1})
            wait_until(lambda: sender.stats.errors == 1, 10)
            time.sleep(0.6)  # past the back-off: a resend would have been tried
            assert (sender.stats.errors, sender.stats.resent, sender.stats.dropped) == (1, 0, 1)
        finally:
            outbox.close()


def frames(sequence: int, fill: float, resent: bool = False) -> list[bytes]:
    template = peer_pb2.UpdateHeader(run_id="run", sender_id="me", tensors=specs_to_wire(SPECS))
    template.codec = CODEC_TO_WIRE[codec.RAW_F32]
    info = UpdateInfo(GRADIENT, sequence, {"me": sequence}, resends=int(resent))
    message = OutboundMessage(template, info, values(fill), codec.RAW_F32)
    return list(message.wire_frames(chunk_bytes=16))  # a header and four data chunks


def test_a_resent_update_is_dropped_if_delivered_and_taken_if_not():
    with serving_node() as (address, node), grpc.insecure_channel(address) as channel:
        push = push_method(channel)
        assert push(iter(frames(10, 1.0)), timeout=10).accepted == 1
        with pytest.raises(grpc.RpcError) as cut:  # 11's header came, not all its payload
            push(iter(frames(11, 2.0)[:-1]), timeout=10)
        assert cut.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as replayed:  # not resent: a replay, refused
            push(iter(frames(10, 1.0)), timeout=10)
        assert replayed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        again = frames(10, 1.0, resent=True) + frames(11, 2.0, resent=True) + frames(12, 3.0)
        ack = push(iter(again), timeout=10)
        assert (ack.accepted, ack.last_sequence) == (3, 12)
        assert fills(node.delivered) == [1.0, 2.0, 3.0]
        np.testing.assert_array_equal(node.delivered[1].arrays[1], np.full((3,), 2.0, np.float32))
        overlong = [*frames(12, 3.0, resent=True)[:-1], transport.data_prefix(20) + bytes(20)]
        with pytest.raises(grpc.RpcError) as overflow:  # the dropped payload is still checked
            push(iter(overlong), timeout=10)
        assert "payload overflows" in overflow.value.details()
        assert len(node.delivered) == 3
