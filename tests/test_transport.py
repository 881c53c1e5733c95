"""Transport: what a sender's bounded queue does when it is full (sum
gradients, replace snapshots, count both), that it stays bounded and never
blocks the trainer when the receiver stops reading, and the hand-made Push
wire format (frames out, parsed views in) against protobuf's own."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import numpy as np
import pytest

from dasgd.v1 import peer_pb2
from peer import codec, transport
from peer.codec import TensorSpec
from peer.strategies.base import GOSSIP_MODEL, GRADIENT, MODEL, Incoming
from peer.transport import (
    CODEC_TO_WIRE,
    MAX_UNCONFIRMED_UPDATES,
    PUSH_METHOD,
    MalformedChunk,
    NeighborSender,
    OutboundMessage,
    Outbox,
    PeerServicer,
    UpdateInfo,
    add_peer_service,
    data_prefix,
    header_frame,
    parse_chunk,
    push_method,
    specs_to_wire,
)
from rpc import make_channel
from tests.conftest import wait_until

SPECS = [TensorSpec("w", (4, 3)), TensorSpec("b", (3,))]


def closed_port() -> int:
    """A port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def values(fill: float) -> list[np.ndarray]:
    return [np.full(s.shape, fill, dtype=np.float32) for s in SPECS]


# No send interval: every update is offered to the senders as it is sent.
UNPACED = {"min_send_interval_s": 0.0, "max_send_rate": 0.0}


@pytest.fixture
def paused_outbox() -> Iterator[Outbox]:
    """An outbox with one neighbor whose link is down and no send interval:
    nothing leaves the queue, so its contents show exactly what `offer` did."""
    outbox = Outbox(
        "run",
        "me",
        "127.0.0.1:1",
        lambda address: grpc.insecure_channel(address),
        SPECS,
        max_queue=2,
        link_up=lambda member_id: False,
        **UNPACED,
    )
    outbox.set_neighbors({"n1": f"127.0.0.1:{closed_port()}"})
    yield outbox
    outbox.close()


def queued(outbox: Outbox) -> list[OutboundMessage]:
    (sender,) = outbox.senders()
    return list(sender._queue)


def test_gradients_are_summed_when_the_queue_is_full(paused_outbox: Outbox):
    paused_outbox.send(MODEL, values(9.0), {"me": 1})
    paused_outbox.send(GRADIENT, values(1.0), {"me": 5, "a": 3}, clock_ticks=1)
    paused_outbox.send(GRADIENT, values(2.0), {"me": 7, "a": 2, "b": 4}, clock_ticks=2)
    first, merged = queued(paused_outbox)
    assert first.kind == MODEL
    assert merged.kind == GRADIENT
    for array in merged.arrays:
        np.testing.assert_array_equal(array, 3.0)
    assert merged.header.clock_ticks == 3
    # The sum is as stale as its oldest part: the older entry per member (0
    # for a member one side had not heard of).
    assert dict(merged.header.vector_clock) == {"me": 5, "a": 2, "b": 0}
    (sender,) = paused_outbox.senders()
    assert (sender.stats.coalesced, sender.stats.dropped) == (1, 0)
    assert sender.queue_depth == 2


def test_a_gradient_no_sender_has_taken_absorbs_the_next_ones():
    """One sum for all neighbors, not a message per step per neighbor."""
    outbox = Outbox(
        "run", "me", "a:1", grpc.insecure_channel, SPECS, link_up=lambda member_id: False
    )
    outbox.set_neighbors({f"n{i}": f"127.0.0.1:{closed_port()}" for i in range(3)})
    try:
        sent = [values(fill) for fill in (1.0, 2.0, 3.0, 4.0)]
        for step, arrays in enumerate(sent):
            outbox.send(GRADIENT, arrays, {"me": step + 1})
        queues = [list(sender._queue) for sender in outbox.senders()]
        assert [len(q) for q in queues] == [1, 1, 1]
        (merged,) = queues[0]
        assert all(q[0] is merged for q in queues)  # still encoded once for all
        np.testing.assert_array_equal(merged.arrays[0], 10.0)
        assert merged.header.clock_ticks == 4
        assert dict(merged.header.vector_clock) == {"me": 1}
        assert [s.stats.coalesced for s in outbox.senders()] == [3, 3, 3]
        np.testing.assert_array_equal(sent[0][0], 1.0)  # the caller's arrays untouched
    finally:
        outbox.close()


@pytest.mark.parametrize(
    "older, newer, summed",
    [
        ({"me": 5, "a": 3}, {"me": 6, "a": 3}, {"me": 5, "a": 3}),  # the usual: newer above
        ({"me": 5, "a": 3}, {"me": 6, "a": 2}, {"me": 5, "a": 2}),  # an entry went down
        ({"me": 5, "a": 3}, {"me": 6, "b": 1}, {"me": 5, "a": 0, "b": 0}),  # members differ
    ],
)
def test_a_sum_is_as_stale_as_its_oldest_part_entry_by_entry(older, newer, summed):
    template = peer_pb2.UpdateHeader(tensors=specs_to_wire(SPECS))
    kept = dict(older)
    first = OutboundMessage(template, UpdateInfo(GRADIENT, 1, older), values(1.0), "raw")
    first.add(values(2.0), newer, 2, 7)
    assert first.info.clock == summed and older == kept  # the caller's dict untouched
    assert (first.info.clock_ticks, first.info.sequence) == (3, 7)
    np.testing.assert_array_equal(first.arrays[1], 3.0)


def test_a_neighbor_with_a_full_queue_gets_every_gradient_summed_in():
    """A broadcast summed into a full queue's last entry is final for the
    outbox: later gradients must not be added to it, or that neighbor never
    gets them."""
    outbox = Outbox(
        "run", "me", "a:1", grpc.insecure_channel, SPECS, link_up=lambda member_id: False, **UNPACED
    )
    outbox.set_neighbors({"fast": f"127.0.0.1:{closed_port()}"})
    fast = outbox.senders()[0]
    slow = NeighborSender(
        "slow", "x", grpc.insecure_channel("127.0.0.1:1"), max_queue=1, link_up=lambda: False
    )
    outbox._senders["slow"] = slow  # a neighbor whose queue holds one update
    try:
        outbox.send(GRADIENT, values(1.0), {"me": 1})
        fast._next_message(0)  # the fast neighbor starts sending the first
        outbox.send(GRADIENT, values(10.0), {"me": 2})  # summed into slow's queued one
        outbox.send(GRADIENT, values(100.0), {"me": 3})
        outbox.send(GRADIENT, values(1000.0), {"me": 4})
        to_fast = 1.0 + sum(m.arrays[0][0, 0] for m in fast._queue)
        to_slow = sum(m.arrays[0][0, 0] for m in slow._queue)
        assert to_fast == to_slow == 1111.0
        assert sum(m.info.clock_ticks for m in slow._queue) == 4
    finally:
        slow.close()
        outbox.close()


def test_with_no_neighbors_a_gradient_is_neither_kept_nor_summed(monkeypatch):
    sums = []
    monkeypatch.setattr(OutboundMessage, "absorb", lambda self, newer: sums.append(newer))
    outbox = Outbox("run", "me", "a:1", grpc.insecure_channel, SPECS)
    try:
        for step in range(3):
            outbox.send(GRADIENT, values(1.0), {"me": step + 1})
        assert sums == [] and outbox._waiting is None
    finally:
        outbox.close()


def test_a_gradient_a_sender_has_taken_is_final(paused_outbox: Outbox):
    paused_outbox.send(GRADIENT, values(1.0), {"me": 1})
    (first,) = queued(paused_outbox)
    first.take()  # as a sender does when it starts on it
    paused_outbox.send(GRADIENT, values(2.0), {"me": 2})
    assert [m.arrays[0][0, 0] for m in queued(paused_outbox)] == [1.0, 2.0]
    assert first.header.sequence < queued(paused_outbox)[1].header.sequence


def test_gradients_within_a_send_interval_go_to_every_neighbor_as_one_message():
    """Summed on the trainer's thread and offered to every neighbor at once
    when due, so no sender is left two messages to sum on its own thread."""
    outbox = Outbox(
        "run", "me", "a:1", grpc.insecure_channel, SPECS, link_up=lambda member_id: False
    )
    outbox.set_neighbors({f"n{i}": f"127.0.0.1:{closed_port()}" for i in range(3)})

    def queues() -> list[list[OutboundMessage]]:
        return [list(sender._queue) for sender in outbox.senders()]

    try:
        outbox.send(GRADIENT, values(1.0), {"me": 1})  # the first goes out at once
        (first,) = queues()[0]
        first.take()  # a sender starts on it
        outbox.send(GRADIENT, values(2.0), {"me": 2})
        outbox.send(GRADIENT, values(3.0), {"me": 3})
        assert [len(q) for q in queues()] == [1, 1, 1]  # held back: not yet due
        outbox._next_release = 0.0  # as if the send interval had passed
        outbox.send(GRADIENT, values(4.0), {"me": 4})
        assert [len(q) for q in queues()] == [2, 2, 2]
        merged = queues()[0][1]
        assert all(q[1] is merged for q in queues())  # one message, encoded once
        np.testing.assert_array_equal(merged.arrays[0], 9.0)
        assert merged.header.clock_ticks == 3
        assert [s.stats.coalesced for s in outbox.senders()] == [2, 2, 2]
        assert [s.stats.queue_coalesced for s in outbox.senders()] == [0, 0, 0]
    finally:
        outbox.close()


def test_gradients_sum_into_a_released_broadcast_no_sender_took_with_no_message_made(
    monkeypatch,
):
    """Right after a broadcast is released its senders are still waking up,
    and the trainer's next gradients are summed into it. That is done with
    no message made for them: each made one cost the trainer's step a few
    microseconds (Outbox 0.84 -> 0.88 of training alone in sender_cost)."""
    made = []

    class Counted(OutboundMessage):
        def __init__(self, *args, **kwargs):
            made.append(args[1].sequence)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(transport, "OutboundMessage", Counted)
    outbox = Outbox(
        "run", "me", "a:1", grpc.insecure_channel, SPECS, link_up=lambda member_id: False
    )
    ports = [closed_port() for _ in range(3)]
    outbox.set_neighbors({f"n{i}": f"127.0.0.1:{ports[i]}" for i in range(2)})
    try:
        outbox.send(GRADIENT, values(1.0), {"me": 1})  # out at once; no sender took it
        outbox.send(GRADIENT, values(2.0), {"me": 2})
        outbox.send(GRADIENT, values(4.0), {"me": 3})
        assert len(made) == 1 and outbox._held is None
        (released,) = {id(m): m for s in outbox.senders() for m in s._queue}.values()
        np.testing.assert_array_equal(released.arrays[0], 7.0)
        assert released.header.clock_ticks == 3 and dict(released.header.vector_clock) == {"me": 1}
        assert released.header.sequence > made[0]  # the sum takes the newest sequence
        assert [s.stats.coalesced for s in outbox.senders()] == [2, 2]
        # A new neighbor: the released gradient (owed to n0 and n1) takes in nothing more.
        outbox.set_neighbors({f"n{i}": f"127.0.0.1:{ports[i]}" for i in range(3)})
        outbox.send(GRADIENT, values(8.0), {"me": 4})
        assert len(made) == 2
        outbox.release_due(force=True)
        totals = {s.member_id: [m.arrays[0][0, 0] for m in s._queue] for s in outbox.senders()}
        assert totals == {"n0": [7.0, 8.0], "n1": [7.0, 8.0], "n2": [8.0]}
        # Taken by a sender: final, the next gradient is held apart.
        for sender in outbox.senders():
            for queued_message in sender._queue:
                queued_message.take()
        outbox.send(GRADIENT, values(16.0), {"me": 5})
        assert len(made) == 3 and outbox._held is not None
    finally:
        outbox.close()


def test_a_held_gradient_goes_before_a_later_model():
    outbox = Outbox(
        "run", "me", "a:1", grpc.insecure_channel, SPECS, link_up=lambda member_id: False
    )
    outbox.set_neighbors({"n1": f"127.0.0.1:{closed_port()}"})
    try:
        outbox.send(GRADIENT, values(1.0), {"me": 1})
        queued(outbox)[0].take()
        outbox.send(GRADIENT, values(2.0), {"me": 2})  # held
        assert len(queued(outbox)) == 1
        outbox.send(MODEL, values(3.0), {"me": 3})
        assert [m.arrays[0][0, 0] for m in queued(outbox)] == [1.0, 2.0, 3.0]
    finally:
        outbox.close()


def test_a_held_gradient_is_not_summed_with_one_for_a_new_set_of_neighbors():
    """A gradient held for n0 and n1 must not take in one made after n2
    joined: n2 would be sent the older gradient too, n0 and n1 are owed it."""
    outbox = Outbox(
        "run", "me", "a:1", grpc.insecure_channel, SPECS, link_up=lambda member_id: False
    )
    ports = [closed_port() for _ in range(3)]
    outbox.set_neighbors({f"n{i}": f"127.0.0.1:{ports[i]}" for i in range(2)})
    try:
        outbox.send(GRADIENT, values(1.0), {"me": 1})  # out at once
        for sender in outbox.senders():
            sender._queue[0].take()
        outbox.send(GRADIENT, values(2.0), {"me": 2})  # held: not yet due
        outbox.send(GRADIENT, values(4.0), {"me": 3})  # summed into it
        outbox.set_neighbors({f"n{i}": f"127.0.0.1:{ports[i]}" for i in range(3)})
        outbox.send(GRADIENT, values(8.0), {"me": 4})
        outbox.release_due(force=True)
        totals = {s.member_id: [m.arrays[0][0, 0] for m in s._queue] for s in outbox.senders()}
        assert totals == {"n0": [1.0, 6.0, 8.0], "n1": [1.0, 6.0, 8.0], "n2": [8.0]}
        assert [s.stats.coalesced for s in outbox.senders()] == [1, 1, 0]
    finally:
        outbox.close()


def test_a_held_gradient_goes_out_when_the_trainer_stops_sending(plain_server):
    address, node = plain_server
    outbox = Outbox("run", "me", "a:1", make_channel, SPECS, min_send_interval_s=1.0)
    outbox.set_neighbors({"receiver": address})
    try:
        outbox.send(GRADIENT, values(1.0), {"me": 1})
        assert wait_until(lambda: node.delivered, 10)
        outbox.send(GRADIENT, values(2.0), {"me": 2})
        assert outbox._held is not None  # not due for 1 s
        assert wait_until(lambda: sum(u.clock_ticks for u in node.delivered) == 2, 10)
    finally:
        outbox.close()
    assert [u.arrays[0][0, 0] for u in node.delivered] == [1.0, 2.0]


def test_senders_of_a_trainer_sending_every_step_do_not_sum():
    """With the default send rate, 3 neighbors and a gradient every ms, the
    senders take each broadcast as it was summed: sums on a sender's thread
    (1.7 per message sent, before broadcasts were held back until due) each
    take the interpreter lock from the trainer a few more times."""
    with contextlib.ExitStack() as stack:
        served = [stack.enter_context(serving_node()) for _ in range(3)]
        outbox = Outbox("run", "me", "a:1", make_channel, SPECS)
        outbox.set_neighbors({f"n{i}": address for i, (address, _) in enumerate(served)})
        senders = outbox.senders()
        try:
            end = time.monotonic() + 1.5
            step = 0
            while time.monotonic() < end:
                step += 1
                outbox.send(GRADIENT, values(1.0), {"me": step})
                time.sleep(0.001)
        finally:
            outbox.close(flush_timeout=5)
        for _, node in served:
            assert sum(u.clock_ticks for u in node.delivered) == step
    stats = [sender.stats for sender in senders]
    assert all(s.sent >= 10 for s in stats), stats
    assert sum(s.queue_coalesced for s in stats) <= sum(s.sent for s in stats) // 5, stats


def test_gradients_queued_behind_each_other_leave_as_one():
    sender = NeighborSender("n1", "x", grpc.insecure_channel("127.0.0.1:1"), link_up=lambda: False)
    try:
        first, second = message(2), message(2)
        second.info.sequence = 8
        sender.offer(first)
        sender.offer(second)
        out = sender._next_message(0)
        assert out is not first and out.header.sequence == 8
        np.testing.assert_array_equal(out.arrays[0], 2 * first.arrays[0])
        assert sender.queue_depth == 0 and sender.stats.coalesced == 1
        assert first.arrays[0][0, 1] == 1.0  # shared with another neighbor: not summed into
    finally:
        sender.close()


def test_a_model_snapshot_replaces_the_queued_one(paused_outbox: Outbox):
    paused_outbox.send(MODEL, values(1.0), {"me": 1})
    paused_outbox.send(GRADIENT, values(5.0), {"me": 1})
    paused_outbox.send(MODEL, values(2.0), {"me": 2})
    gradient, model = queued(paused_outbox)
    assert (gradient.kind, model.kind) == (GRADIENT, MODEL)
    np.testing.assert_array_equal(model.arrays[0], 2.0)
    (sender,) = paused_outbox.senders()
    assert (sender.stats.dropped, sender.stats.coalesced) == (1, 0)


def test_gradients_of_different_rounds_are_not_summed(paused_outbox: Outbox):
    paused_outbox.send(GRADIENT, values(1.0), {"me": 1}, round_=1)
    paused_outbox.send(GRADIENT, values(2.0), {"me": 2}, round_=2)
    paused_outbox.send(GRADIENT, values(3.0), {"me": 3}, round_=3)
    assert [m.header.round for m in queued(paused_outbox)] == [2, 3]
    (sender,) = paused_outbox.senders()
    assert (sender.stats.dropped, sender.stats.coalesced) == (1, 0)


def test_other_kinds_drop_the_oldest(paused_outbox: Outbox):
    for fill in (1.0, 2.0, 3.0):
        paused_outbox.send(GOSSIP_MODEL, values(fill), {"me": 1}, to="n1")
    assert [m.arrays[0][0, 0] for m in queued(paused_outbox)] == [2.0, 3.0]
    (sender,) = paused_outbox.senders()
    assert sender.stats.dropped == 1


# --- a receiver that never reads -------------------------------------------------------


@pytest.fixture
def stuck_receiver() -> Iterator[str]:
    """A gRPC server whose Push accepts the stream and never reads from it."""
    release = threading.Event()

    def push(request_iterator, context):
        release.wait(60)
        context.abort(grpc.StatusCode.UNAVAILABLE, "going away")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.stream_unary_rpc_method_handler(
        push, response_serializer=peer_pb2.PushAck.SerializeToString
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("dasgd.v1.Peer", {"Push": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    release.set()
    server.stop(0).wait(5)


def test_queue_stays_bounded_and_send_never_blocks_when_the_receiver_never_reads(
    stuck_receiver: str,
):
    max_queue = 4
    specs = [TensorSpec("w", (256, 1024))]  # 1 MiB per update
    outbox = Outbox("run", "me", "127.0.0.1:1", make_channel, specs, max_queue=max_queue)
    outbox.set_neighbors({"n1": stuck_receiver})
    (sender,) = outbox.senders()
    update = [np.ones(specs[0].shape, dtype=np.float32)]
    slowest = 0.0
    try:
        start = time.monotonic()
        for step in range(300):  # 300 MiB: far beyond what HTTP/2 windows buffer
            kind = MODEL if step % 2 else GRADIENT
            before = time.monotonic()
            outbox.send(kind, update, {"me": step})
            slowest = max(slowest, time.monotonic() - before)
            assert sender.queue_depth <= max_queue
            if step % 50 == 0:
                time.sleep(0.05)  # let the sender thread fill the stream
        elapsed = time.monotonic() - start
        assert sender.stats.coalesced > 0 and sender.stats.dropped > 0, sender.stats
        assert sender.stats.sent < 300
        assert sender.queue_depth == max_queue
    finally:
        outbox.close()
    assert slowest < 0.5, f"one send took {slowest:.3f}s"
    assert elapsed < 10, f"300 sends took {elapsed:.1f}s"


# --- the Push wire format ----------------------------------------------------------


def message(recipients: int, codec_name: str = codec.RAW_F32) -> OutboundMessage:
    template = peer_pb2.UpdateHeader(
        run_id="run", sender_id="me", tensors=specs_to_wire(SPECS), codec=CODEC_TO_WIRE[codec_name]
    )
    arrays = [np.arange(s.numel, dtype=np.float32).reshape(s.shape) for s in SPECS]
    return OutboundMessage(template, UpdateInfo(GRADIENT, 7, {}), arrays, codec_name, recipients)


@pytest.mark.parametrize("codec_name", codec.CODECS)
def test_wire_frames_are_chunks_protobuf_reads_the_same(codec_name: str):
    outbound = message(1, codec_name)
    frames = list(outbound.wire_frames(chunk_bytes=20))
    parsed = [peer_pb2.Chunk.FromString(f) for f in frames]
    assert parsed[0].WhichOneof("payload") == "header"
    assert parsed[0].header.total_bytes == codec.payload_bytes(SPECS, codec_name)
    assert all(c.WhichOneof("payload") == "data" for c in parsed[1:])
    payload = b"".join(c.data for c in parsed[1:])
    assert payload == bytes(codec.encode(outbound.arrays, codec_name, parsed[0].header.scale))
    for frame, chunk in zip(frames[1:], parsed[1:]):
        view = parse_chunk(frame)
        assert isinstance(view, memoryview) and view.obj is frame  # no copy
        assert bytes(view) == chunk.data


def test_fan_out_serializes_once():
    outbound = message(3)
    first = list(outbound.wire_frames(chunk_bytes=16))
    second = list(outbound.wire_frames(chunk_bytes=16))
    assert len(first) > 2 and all(a is b for a, b in zip(first, second))


def test_a_single_recipient_gets_frames_made_as_sent():
    outbound = message(1)
    first = list(outbound.wire_frames(chunk_bytes=16))
    second = list(outbound.wire_frames(chunk_bytes=16))
    assert first == second and first[1] is not second[1]


@pytest.mark.parametrize("size", [0, 1, 127, 128, 300, 1 << 20, 16 << 20])
def test_data_prefix_is_protobufs(size: int):
    serialized = peer_pb2.Chunk(data=b"\0" * size).SerializeToString()
    assert data_prefix(size) == serialized[: len(serialized) - size]


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(peer_pb2.Chunk(data=b"ab").SerializeToString() + b"\x18\x01", id="unknown"),
        pytest.param(
            peer_pb2.Chunk(data=b"ab").SerializeToString()
            + peer_pb2.Chunk(header=peer_pb2.UpdateHeader(run_id="r")).SerializeToString(),
            id="data-then-header",
        ),
        pytest.param(b"\x12\x02ab\x12\x01c", id="data-twice"),
    ],
)
def test_unusual_but_valid_chunks_mean_what_protobuf_says(raw: bytes):
    parsed = parse_chunk(raw)
    assert isinstance(parsed, peer_pb2.Chunk)
    assert parsed == peer_pb2.Chunk.FromString(raw)


@pytest.mark.parametrize("raw", [b"\xff\xff\xff\xff\x0f", b"\x12\x05ab", b"\x12\xff"])
def test_garbage_parses_to_malformed(raw: bytes):
    assert isinstance(parse_chunk(raw), MalformedChunk)


class Node:
    run_id = "run"
    member_id = "receiver"
    specs = SPECS
    accepts = frozenset({GRADIENT})
    max_update_bytes = 1 << 20

    def __init__(self) -> None:
        self.delivered: list[Incoming] = []

    def is_member(self, member_id: str) -> bool:
        return True

    def deliver(self, update: Incoming) -> bool:
        self.delivered.append(update)
        return True

    def count_rejection(self, code: grpc.StatusCode) -> None:
        pass


@contextlib.contextmanager
def serving_node() -> Iterator[tuple[str, Node]]:
    """PeerServicer on a bare grpc.server: no interceptors to help it."""
    node = Node()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    add_peer_service(server, PeerServicer(node))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", node
    finally:
        server.stop(0).wait(5)


@pytest.fixture
def plain_server() -> Iterator[tuple[str, Node]]:
    with serving_node() as served:
        yield served


@pytest.mark.parametrize("codec_name", codec.CODECS)
def test_push_delivers_through_the_hand_made_path(plain_server, codec_name: str):
    address, node = plain_server
    outbound = message(1, codec_name)
    with grpc.insecure_channel(address) as channel:
        ack = push_method(channel)(outbound.wire_frames(chunk_bytes=8), timeout=10)
    assert ack.accepted == 1 and ack.last_sequence == 7
    (update,) = node.delivered
    for got, sent in zip(update.arrays, outbound.arrays):
        np.testing.assert_allclose(got, sent, rtol=2**-8)


@pytest.mark.parametrize("codec_name", codec.CODECS)
def test_a_small_update_is_one_message_with_its_payload_inline(plain_server, codec_name: str):
    address, node = plain_server
    outbound = message(1, codec_name)
    (frame,) = outbound.wire_frames()  # default chunk: everything fits one message
    header = peer_pb2.Chunk.FromString(frame).header
    expected = bytes(codec.encode(outbound.arrays, codec_name, header.scale))
    assert header.inline_payload == expected and header.total_bytes == len(expected)
    with grpc.insecure_channel(address) as channel:
        ack = push_method(channel)(iter([frame]), timeout=10)
    assert ack.accepted == 1
    (update,) = node.delivered
    decoded = codec.decode(expected, SPECS, codec_name, header.scale or 1.0)
    for got, want in zip(update.arrays, decoded):
        assert got.tobytes() == want.tobytes()


def test_an_inline_payload_may_be_followed_by_data_chunks(plain_server):
    address, node = plain_server
    outbound = message(1)
    header = outbound.header
    payload = bytes(codec.encode(outbound.arrays))
    frames = [header_frame(header, payload[:10]), data_prefix(len(payload) - 10) + payload[10:]]
    with grpc.insecure_channel(address) as channel:
        ack = push_method(channel)(iter(frames), timeout=10)
    assert ack.accepted == 1
    (update,) = node.delivered
    for got, sent in zip(update.arrays, outbound.arrays):
        assert got.tobytes() == sent.tobytes()


def test_an_inline_payload_longer_than_announced_is_rejected(plain_server):
    address, node = plain_server
    outbound = message(1)
    payload = bytes(codec.encode(outbound.arrays))
    with grpc.insecure_channel(address) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            push_method(channel)(
                iter([header_frame(outbound.header, payload + b"1234")]), timeout=10
            )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "overflows" in raised.value.details()
    assert not node.delivered


def test_garbage_is_invalid_argument_without_any_interceptor(plain_server):
    address, node = plain_server
    with grpc.insecure_channel(address) as channel:
        push = channel.stream_unary(PUSH_METHOD)
        with pytest.raises(grpc.RpcError) as raised:
            push(iter([b"\x12\x05ab"]), timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "dasgd.v1.Chunk" in raised.value.details()
    assert not node.delivered


def test_chunk_size_beyond_the_message_limit_is_refused():
    with pytest.raises(ValueError, match="chunk size"):
        Outbox("run", "me", "a:1", make_channel, SPECS, chunk_bytes=64 << 20)


def test_a_sender_to_a_closed_port_counts_errors_and_keeps_its_bound():
    sender = NeighborSender(
        "n1", "x", grpc.insecure_channel(f"127.0.0.1:{closed_port()}"), max_queue=3
    )
    try:
        for _ in range(20):
            sender.offer(message(1))
            assert sender.queue_depth <= 3
        deadline = time.monotonic() + 10
        while sender.stats.errors == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sender.stats.errors > 0
    finally:
        sender.close()


def test_a_paced_sender_delivers_every_gradient_in_fewer_messages(plain_server):
    address, node = plain_server
    outbox = Outbox("run", "me", "a:1", make_channel, SPECS, min_send_interval_s=0.2)
    outbox.set_neighbors({"receiver": address})
    try:
        for step in range(10):
            outbox.send(GRADIENT, values(1.0), {"me": step})
            time.sleep(0.02)
        deadline = time.monotonic() + 10
        while sum(u.clock_ticks for u in node.delivered) < 10 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        outbox.close()
    assert sum(u.clock_ticks for u in node.delivered) == 10
    assert 2 <= len(node.delivered) <= 4  # ~0.2 s of steps, one update per 0.2 s
    total = sum(u.arrays[0] for u in node.delivered)
    np.testing.assert_array_equal(total, 10.0)


def voluntary_switches(native_id: int) -> int:
    """How many times the thread has blocked (Linux's count for it)."""
    with open(f"/proc/self/task/{native_id}/status") as status:
        return int(status.read().split("\nvoluntary_ctxt_switches:")[1].split()[0])


def test_a_sender_thread_sleeps_while_its_stream_carries_updates(plain_server):
    """The updates of an open Push stream go out on gRPC's threads; the
    sender thread must not wake for each of them: every wake of a thread
    takes the interpreter lock from the training thread. All of them on
    one stream: a stream ends after MAX_UNCONFIRMED_UPDATES to be confirmed,
    and starting the next one wakes the thread (5 to 14 times here), which
    once made this test fail at 100 messages."""
    address, node = plain_server
    outbox = Outbox("run", "me", "a:1", make_channel, SPECS, min_send_interval_s=0, max_send_rate=0)
    outbox.set_neighbors({"receiver": address})
    messages = MAX_UNCONFIRMED_UPDATES - 1
    try:
        outbox.send(GRADIENT, values(1.0), {"me": 0})
        wait_until(lambda: node.delivered, 10, interval=0.005)
        sender = outbox.senders()[0]._thread
        before = voluntary_switches(sender.native_id)
        for step in range(1, messages):  # each its own message: sent before the next
            outbox.send(GRADIENT, values(1.0), {"me": step})
            wait_until(lambda n=step + 1: len(node.delivered) >= n, 10, interval=0.001)
        woke = voluntary_switches(sender.native_id) - before
    finally:
        outbox.close()
    assert len(node.delivered) == messages
    assert woke < 5, f"the sender thread woke {woke} times for {messages - 1} messages"


def test_the_send_rate_is_shared_by_all_neighbors():
    outbox = Outbox("run", "me", "a:1", make_channel, SPECS, max_send_rate=10.0)
    assert outbox.send_interval_s(1) == pytest.approx(0.1)
    assert outbox.send_interval_s(3) == pytest.approx(0.3)
    unlimited = Outbox("run", "me", "a:1", make_channel, SPECS, max_send_rate=0)
    assert unlimited.send_interval_s(16) == pytest.approx(0.01)  # the per-stream floor
    with serving_node() as (first, node1), serving_node() as (second, node2):
        outbox.set_neighbors({"n1": first, "n2": second})
        assert [s.min_interval_s for s in outbox.senders()] == pytest.approx([0.2, 0.2])
        try:
            started = time.monotonic()
            for step in range(40):  # ~0.8 s of steps
                outbox.send(GRADIENT, values(1.0), {"me": step})
                time.sleep(0.02)
            deadline = time.monotonic() + 10
            for node in (node1, node2):
                while (
                    sum(u.clock_ticks for u in node.delivered) < 40 and time.monotonic() < deadline
                ):
                    time.sleep(0.02)
            elapsed = time.monotonic() - started
        finally:
            outbox.close()
    for node in (node1, node2):
        assert sum(u.clock_ticks for u in node.delivered) == 40
        np.testing.assert_array_equal(sum(u.arrays[0] for u in node.delivered), 40.0)
        # one update per 0.2 s per stream (10/s shared by two), plus the first
        assert len(node.delivered) <= elapsed / 0.2 + 2, (len(node.delivered), elapsed)


def large_fp16_message(recipients: int, peak: float) -> OutboundMessage:
    """An fp16 update whose last value is `peak` (the rest small)."""
    template = peer_pb2.UpdateHeader(
        run_id="run", sender_id="me", tensors=specs_to_wire(SPECS), codec=CODEC_TO_WIRE[codec.F16]
    )
    arrays = [np.linspace(-1, 1, s.numel, dtype=np.float32).reshape(s.shape) for s in SPECS]
    arrays[-1][-1] = peak
    return OutboundMessage(template, UpdateInfo(GRADIENT, 7, {}), arrays, codec.F16, recipients)


def test_fp16_frames_are_checked_for_overflow_as_they_are_made():
    fits = large_fp16_message(1, 65504.0).arrays
    list(codec.iter_frames(fits, codec.F16, chunk_bytes=8, check_f16=True))
    for peak in (70000.0, float("nan")):
        frames = codec.iter_frames(
            large_fp16_message(1, peak).arrays, codec.F16, chunk_bytes=8, check_f16=True
        )
        assert next(frames)  # chunks before the bad value go out
        with pytest.raises(codec.F16Overflow):
            list(frames)


@pytest.mark.parametrize("recipients", [1, 2])
def test_an_fp16_update_beyond_its_range_arrives_scaled(plain_server, recipients: int):
    """Sent at scale 1 until a chunk overflows: one recipient's stream starts
    the update over with a scale (same sequence), several recipients' frames
    are made again before any is sent. Either way it arrives once, intact."""
    address, node = plain_server
    outbound = large_fp16_message(recipients, 1e6)
    with grpc.insecure_channel(address) as channel:
        ack = push_method(channel)(outbound.wire_frames(chunk_bytes=8), timeout=10)
    assert ack.accepted == 1 and ack.last_sequence == 7
    assert outbound.restarted == (recipients == 1)
    assert outbound.header.scale == pytest.approx(1e6 / codec.F16_MAX)
    (update,) = node.delivered
    for got, sent in zip(update.arrays, outbound.arrays):
        np.testing.assert_allclose(got, sent, rtol=2**-10, atol=outbound.header.scale * 2**-14)


@pytest.fixture
def first_stream_refused(plain_server, monkeypatch) -> Iterator[tuple[Outbox, Node]]:
    """An Outbox whose one neighbor refused its first update (aborting the
    stream: its inbox stayed full) and takes every later one, including that
    one sent again."""
    address, node = plain_server
    calls = []
    accept = node.deliver
    monkeypatch.setattr(node, "deliver", lambda u: calls.append(u) or len(calls) > 1 and accept(u))
    outbox = Outbox("run", "me", "a:1", grpc.insecure_channel, SPECS, min_send_interval_s=0.0)
    outbox.set_neighbors({"receiver": address})
    (sender,) = outbox.senders()
    try:
        outbox.send(GRADIENT, values(1.0), {"me": 1})  # refused: the stream is aborted
        wait_until(lambda: sender.stats.errors == 1, 10)
        yield outbox, node
    finally:
        outbox.close()


def test_no_update_is_lost_to_a_push_stream_the_receiver_ended(first_stream_refused):
    """After the receiver aborts a stream, gRPC's thread reading that stream's
    requests may still wait for the next update: it must not take one (gRPC
    would drop it unsent and uncounted)."""
    outbox, node = first_stream_refused
    time.sleep(0.5)  # a new stream waits for the next update
    for fill in (2.0, 3.0, 4.0, 5.0):
        outbox.send(GRADIENT, values(fill), {"me": int(fill)})
        time.sleep(0.3)
    got = lambda: sorted(float(u.arrays[0].flat[0]) for u in node.delivered)  # noqa: E731
    wait_until(lambda: sum(got()) == 15.0, 10)
    time.sleep(0.3)
    assert got() == [1.0, 2.0, 3.0, 4.0, 5.0]  # the refused one sent again, once


def test_no_update_is_lost_while_the_sender_backs_off_after_an_error(first_stream_refused):
    """The sender waits before opening a new stream after a failed one; an
    update queued meanwhile must wait for the new stream, not be taken by
    the failed stream's request reader (which gRPC drops)."""
    outbox, node = first_stream_refused
    outbox.send(GRADIENT, values(2.0), {"me": 2})  # within the 0.2 s back-off
    wait_until(lambda: len(node.delivered) == 2, 10)
    # The refused one first, sent again; then the one queued meanwhile.
    assert [float(u.arrays[0].flat[0]) for u in node.delivered] == [1.0, 2.0]
    assert [u.clock for u in node.delivered] == [{"me": 1}, {"me": 2}]


def test_a_peer_restarted_with_its_clock_set_back_is_heard_after_one_refusal(plain_server):
    """Sequences start from the wall clock. A peer restarted (same member id)
    with its clock an hour behind used to be refused by every neighbor for
    that hour; the refusal now names the receiver's last sequence and the
    sender goes on above it, the refused update first."""
    address, node = plain_server
    before = Outbox("run", "me", "a:1", grpc.insecure_channel, SPECS, min_send_interval_s=0.0)
    before._sequence += 3_600 * 10**6  # an hour ahead
    before.set_neighbors({"receiver": address})
    try:
        before.send(GRADIENT, values(1.0), {"me": 1})
        wait_until(lambda: len(node.delivered) == 1, 10)
    finally:
        before.close()
    after = Outbox("run", "me", "a:1", grpc.insecure_channel, SPECS, min_send_interval_s=0.0)
    after.set_neighbors({"receiver": address})
    (sender,) = after.senders()
    try:
        after.send(GRADIENT, values(2.0), {"me": 2})  # refused, with the last sequence
        wait_until(lambda: sender.stats.errors == 1, 10)
        wait_until(lambda: len(node.delivered) == 2, 10)  # then sent above it
        for fill in (3.0, 4.0, 5.0):
            after.send(GRADIENT, values(fill), {"me": int(fill)})
            time.sleep(0.3)  # each on its own, not summed in the queue
        wait_until(lambda: len(node.delivered) == 5, 10)
        assert [float(u.arrays[0].flat[0]) for u in node.delivered] == [1, 2, 3, 4, 5]
        assert sender.stats.errors == 1
    finally:
        after.close()


def test_the_training_thread_never_waits_for_a_sender_making_frames():
    busy = message(2)
    holding = threading.Event()

    def encode_slowly():  # as wire_frames holds the lock while it encodes
        with busy._lock:
            busy.taken = True
            holding.set()
            time.sleep(1.0)

    thread = threading.Thread(target=encode_slowly)
    thread.start()
    holding.wait(5)
    started = time.monotonic()
    other = message(2)
    assert busy.try_add(other.arrays, other.info.clock, 1, other.info.sequence) is False
    assert time.monotonic() - started < 0.5
    thread.join()


def test_bytes_sent_counts_neighbors_that_are_gone():
    outbox = Outbox("run", "me", "a:1", grpc.insecure_channel, SPECS, link_up=lambda m: False)
    try:
        outbox.set_neighbors({"n1": "127.0.0.1:1", "n2": "127.0.0.1:2"})
        for sender in outbox.senders():
            sender.stats.bytes_sent = 60
        outbox.set_neighbors({"n2": "127.0.0.1:2"})  # n1 left
        live = sum(s.stats.bytes_sent for s in outbox.senders())
        assert live + outbox.retired_bytes_sent == 120
    finally:
        outbox.close()
