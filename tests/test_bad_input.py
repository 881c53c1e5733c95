"""Hostile and broken input against a live peer and bootstrap, in-process.

Every case sends one kind of bad input and checks four things: the exact gRPC
status, a message that says what was wrong, that the daemon still answers
SERVING over grpc.health.v1, and that the model is byte-identical before and
after (read back through Pull). The peer's trainer is paused, so the model
changes only through updates the peer accepts; the positive control proves
that an accepted update does change it, so the comparison is not vacuous.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest

from bootstrap.registry import MAX_LABELS, MAX_MEMBERS_PER_RUN, MAX_RUNS
from bootstrap.service import BootstrapDaemon
from dasgd.v1 import membership_pb2, membership_pb2_grpc, peer_pb2, peer_pb2_grpc
from peer import codec
from peer.config import PeerConfig
from peer.daemon import PeerDaemon
from peer.transport import CODEC_TO_WIRE, pull_model, specs_to_wire
from rpc import Security, make_channel, start_server
from rpc.server import MAX_MESSAGE_BYTES
from tests.conftest import health_status, wait_until

RUN_ID = "bad-input"
SENDER = "mallory"  # joined to the run, so its updates pass the membership check

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED

Chunks = Iterable[peer_pb2.Chunk]
# Status messages travel in a trailer that clients cap at 8-16 KiB; one that
# echoes a huge field back would itself fail as RESOURCE_EXHAUSTED.
MAX_DETAILS = 1024
HUGE = 100_000


def data(payload: bytes | memoryview) -> peer_pb2.Chunk:
    return peer_pb2.Chunk(data=bytes(payload))


def joined(
    stub: membership_pb2_grpc.MembershipStub, run_id: str, member_id: str, address: str
) -> membership_pb2.JoinResponse:
    return stub.Join(
        membership_pb2.JoinRequest(run_id=run_id, member_id=member_id, address=address), timeout=5
    )


@dataclass
class Target:
    """A paused peer, the bootstrap it joined, and a client speaking for SENDER."""

    bootstrap: BootstrapDaemon
    peer: PeerDaemon
    channel: grpc.Channel
    _sequence: Iterator[int] = field(default_factory=lambda: itertools.count(time.time_ns()))

    @property
    def stub(self) -> peer_pb2_grpc.PeerStub:
        return peer_pb2_grpc.PeerStub(self.channel)

    def header(self, **fields: object) -> peer_pb2.UpdateHeader:
        """A valid GRADIENT header for the local model, fresh sequence number,
        with `fields` overriding any of it."""
        specs = self.peer.specs
        values: dict[str, object] = dict(
            run_id=RUN_ID,
            sender_id=SENDER,
            sequence=next(self._sequence),
            kind=peer_pb2.GRADIENT,
            vector_clock={SENDER: 1},
            tensors=specs_to_wire(specs),
            codec=peer_pb2.RAW_F32,
            scale=1.0,
            total_bytes=codec.payload_bytes(specs, codec.RAW_F32),
            clock_ticks=1,
        )
        values.update(fields)
        return peer_pb2.UpdateHeader(**values)

    def gradient(self, value: float = 0.01) -> list[np.ndarray]:
        return [np.full(s.shape, value, dtype=np.float32) for s in self.peer.specs]

    def update(
        self,
        arrays: list[np.ndarray] | None = None,
        codec_name: str = codec.RAW_F32,
        **fields: object,
    ) -> list[peer_pb2.Chunk]:
        """Header and data chunks (several, so truncation can fall mid-payload)."""
        payload = codec.encode(arrays if arrays is not None else self.gradient(), codec_name)
        fields.setdefault("codec", CODEC_TO_WIRE[codec_name])
        fields.setdefault("total_bytes", len(payload))
        header = self.header(**fields)
        pieces = codec.chunks(payload, max(1, len(payload) // 4 + 1))
        return [peer_pb2.Chunk(header=header), *(data(p) for p in pieces)]

    def push(self, chunks: Chunks) -> peer_pb2.PushAck:
        return self.stub.Push(iter(chunks), timeout=10)

    def model(self) -> bytes:
        """The peer's current model, as Pull serves it."""
        arrays, _ = pull_model(self.channel, RUN_ID, SENDER, self.peer.specs, timeout=10)
        return b"".join(a.tobytes() for a in arrays)

    def applied(self) -> int:
        return self.peer.trainer.stats.updates_applied

    def assert_healthy(self) -> None:
        assert health_status(self.peer.address) == "SERVING"
        assert health_status(self.bootstrap.address) == "SERVING"

    def expect_rejected(
        self,
        send: Callable[[], object],
        code: grpc.StatusCode,
        *message_parts: str,
    ) -> grpc.RpcError:
        """Runs `send`, which must fail with `code` and a message naming each
        of `message_parts`; the peer stays SERVING and the model untouched."""
        before, applied = self.model(), self.applied()
        with pytest.raises(grpc.RpcError) as raised:
            send()
        error = raised.value
        assert error.code() == code, error.details()
        assert len(error.details() or "") <= MAX_DETAILS, "a status message must stay short"
        for part in message_parts:
            assert part in (error.details() or ""), error.details()
        self.assert_unchanged(before, applied)
        return error

    def expect_push_rejected(
        self, chunks: Chunks, code: grpc.StatusCode, *message_parts: str
    ) -> grpc.RpcError:
        return self.expect_rejected(lambda: self.push(chunks), code, *message_parts)

    def assert_unchanged(self, before: bytes, applied: int) -> None:
        # A delivered update sits in the inbox or has been applied by the time
        # Pull returns: Pull runs on the training thread after the inbox drains.
        assert self.model() == before, "the model changed"
        assert self.peer.trainer.inbox.qsize() == 0
        assert self.applied() == applied
        self.assert_healthy()


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    bootstrap = BootstrapDaemon("127.0.0.1:0", ttl=600).start()
    with make_channel(bootstrap.address) as channel:
        joined(membership_pb2_grpc.MembershipStub(channel), RUN_ID, SENDER, "127.0.0.1:9")
    peer = PeerDaemon(
        PeerConfig(
            bootstrap=bootstrap.address,
            listen="127.0.0.1:0",
            run_id=RUN_ID,
            warm_start=False,
            min_members_timeout_s=0,
        )
    )
    peer.trainer.pause(True)  # before start: no local step is ever taken
    peer.start()
    channel = make_channel(peer.address)
    try:
        yield Target(bootstrap, peer, channel)
    finally:
        channel.close()
        peer.shutdown(flush_timeout_s=0)
        bootstrap.stop(grace=0.2)


# --- positive control ----------------------------------------------------------


def test_a_valid_update_is_applied(target: Target):
    before, applied = target.model(), target.applied()
    ack = target.push(target.update())
    assert ack.accepted == 1
    wait_until(lambda: target.applied() == applied + 1, timeout=10, interval=0.02)
    after = target.model()
    assert after != before
    lr = target.peer.workload.learning_rate
    expected = np.frombuffer(before, np.float32) - np.float32(lr * 0.01)
    np.testing.assert_allclose(np.frombuffer(after, np.float32), expected, rtol=1e-5, atol=1e-6)
    target.assert_healthy()


# --- Push: header checks ---------------------------------------------------------


def test_oversize_total_bytes_is_resource_exhausted(target: Target):
    header = target.header(total_bytes=target.peer.max_update_bytes + 1)
    target.expect_push_rejected(
        [peer_pb2.Chunk(header=header)], EXHAUSTED, "exceeds the limit", str(header.total_bytes)
    )


def test_total_bytes_not_matching_the_model_is_invalid(target: Target):
    header = target.header(total_bytes=1 << 20)
    target.expect_push_rejected([peer_pb2.Chunk(header=header)], INVALID, "announces 1048576")


def test_wrong_tensor_count(target: Target):
    tensors = specs_to_wire(target.peer.specs)[:-1]
    target.expect_push_rejected(
        [peer_pb2.Chunk(header=target.header(tensors=tensors))],
        INVALID,
        f"{len(tensors)} tensors",
        "same workload",
    )


def _respec(target: Target, index: int, **changes: object) -> list[peer_pb2.TensorSpec]:
    tensors = specs_to_wire(target.peer.specs)
    for name, value in changes.items():
        if name == "shape":
            del tensors[index].shape[:]
            tensors[index].shape.extend(value)
        else:
            setattr(tensors[index], name, value)
    return tensors


def test_wrong_shape(target: Target):
    spec = target.peer.specs[0]
    tensors = _respec(target, 0, shape=[spec.shape[1], spec.shape[0]])
    target.expect_push_rejected(
        [peer_pb2.Chunk(header=target.header(tensors=tensors))],
        INVALID,
        f"tensor mismatch for {spec.name}",
        str(spec.shape),
    )


def test_wrong_tensor_name(target: Target):
    tensors = _respec(target, 1, name="not.a.parameter")
    target.expect_push_rejected(
        [peer_pb2.Chunk(header=target.header(tensors=tensors))], INVALID, "not.a.parameter"
    )


HUGE_FIELDS = {
    "run-id": (dict(run_id="r" * HUGE), PRECONDITION, "wrong run id"),
    "sender-id": (dict(sender_id="s" * HUGE), PRECONDITION, "unknown sender"),
    "tensor-name": ("name", INVALID, "tensor mismatch"),
    "tensor-dtype": ("dtype", INVALID, "tensor mismatch"),
    "tensor-shape": ("shape", INVALID, "tensor mismatch"),
}


@pytest.mark.parametrize("fields, code, message", HUGE_FIELDS.values(), ids=HUGE_FIELDS)
def test_huge_header_fields_get_a_short_answer(
    target: Target, fields: dict | str, code: grpc.StatusCode, message: str
):
    if isinstance(fields, str):
        value = [1] * HUGE if fields == "shape" else "x" * HUGE
        fields = dict(tensors=_respec(target, 0, **{fields: value}))
    target.expect_push_rejected(target.update(**fields), code, message)


def test_wrong_dtype(target: Target):
    tensors = _respec(target, 0, dtype="float64")
    target.expect_push_rejected(
        [peer_pb2.Chunk(header=target.header(tensors=tensors))], INVALID, "float64", "float32"
    )


def test_wrong_run_id(target: Target):
    target.expect_push_rejected(
        target.update(run_id="another-run"), PRECONDITION, "wrong run id", "another-run"
    )


def test_unknown_sender(target: Target):
    target.expect_push_rejected(
        target.update(sender_id="stranger"), PRECONDITION, "unknown sender", "stranger"
    )


@pytest.mark.parametrize("wire_codec", [peer_pb2.CODEC_UNSPECIFIED, 99])
def test_wrong_codec_value(target: Target, wire_codec: int):
    target.expect_push_rejected(
        target.update(codec=wire_codec), INVALID, f"unknown codec {wire_codec}"
    )


@pytest.mark.parametrize(
    "kind, shown",
    [(peer_pb2.MODEL, "MODEL"), (peer_pb2.UPDATE_KIND_UNSPECIFIED, "UNSPECIFIED"), (77, "77")],
)
def test_kind_the_strategy_does_not_use(target: Target, kind: int, shown: str):
    target.expect_push_rejected(target.update(kind=kind), INVALID, shown, "--strategy")


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), 1e31])
def test_unusable_scale(target: Target, scale: float):
    target.expect_push_rejected(target.update(scale=scale), INVALID, "not a usable factor")


@pytest.mark.parametrize("ticks", [0, 1_000_001])
def test_clock_ticks_out_of_range(target: Target, ticks: int):
    target.expect_push_rejected(target.update(clock_ticks=ticks), INVALID, "clock_ticks")


@pytest.mark.parametrize(
    "fields",
    [
        {"round": 2**62},
        {"round": 2**64 - 1},
        {"sequence": 2**64 - 1},
        {"vector_clock": {SENDER: 1, "anyone": 2**64 - 1}},
    ],
    ids=["round-2^62", "round-max", "sequence-max", "clock-max"],
)
def test_counters_that_would_overflow_when_counted_on(target: Target, fields: dict):
    # Accepted, a round of 2**64 - 1 would make this peer's next round (and
    # a clock entry that big its next tick) unsendable as uint64.
    name = next(iter(fields)).replace("_", " ")
    target.expect_push_rejected(target.update(**fields), INVALID, name, "out of range")


# --- Push: payload checks ----------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("codec_name", codec.CODECS)
def test_non_finite_values(target: Target, bad: float, codec_name: str):
    arrays = target.gradient()
    arrays[-1][3] = bad
    name = target.peer.specs[-1].name
    target.expect_push_rejected(
        target.update(arrays, codec_name), INVALID, f"tensor {name} contains NaN or Inf"
    )


def test_finite_values_that_overflow_once_scaled(target: Target):
    """3e38 and a scale of 4 are each acceptable; their product is +inf."""
    target.expect_push_rejected(
        target.update(_overflowing(target), scale=4.0),
        INVALID,
        "NaN or Inf values after scaling by 4",
    )


def test_data_before_any_header(target: Target):
    chunks = target.update()
    target.expect_push_rejected(chunks[1:], INVALID, "data chunk before any header")


def test_data_first_then_a_valid_header(target: Target):
    chunks = target.update()
    target.expect_push_rejected([chunks[1], *chunks], INVALID, "data chunk before any header")


def test_empty_chunk(target: Target):
    target.expect_push_rejected([peer_pb2.Chunk()], INVALID, "empty chunk")


def test_stream_ends_mid_payload(target: Target):
    chunks = target.update()
    target.expect_push_rejected(chunks[:-1], INVALID, "stream ended after", "truncated")


def test_header_only(target: Target):
    target.expect_push_rejected(target.update()[:1], INVALID, "stream ended after 0 of")


def test_next_header_before_the_payload_is_complete(target: Target):
    first, second = target.update(), target.update()
    target.expect_push_rejected([*first[:-1], *second], INVALID, "new header after", "truncated")


def test_a_header_repeating_the_update_in_progress_starts_it_over(target: Target):
    """How a sender restarts an fp16 update that overflowed: the partial
    payload is dropped, the update is applied once; a repeat once it is
    complete is still a duplicate."""
    chunks = target.update()
    applied = target.applied()
    assert target.push([*chunks[:-1], *chunks]).accepted == 1
    wait_until(lambda: target.applied() == applied + 1, timeout=10, interval=0.02)
    time.sleep(0.2)
    assert target.applied() == applied + 1
    target.expect_push_rejected(chunks, INVALID, "duplicate or replayed")


def test_payload_longer_than_announced(target: Target):
    chunks = target.update()
    chunks[-1] = data(chunks[-1].data + b"\0" * 4)
    target.expect_push_rejected(chunks, INVALID, "payload overflows")


def test_duplicate_and_replayed_sequence_numbers(target: Target):
    first = target.update()
    applied = target.applied()
    assert target.push(first).accepted == 1
    wait_until(lambda: target.applied() == applied + 1, timeout=10, interval=0.02)
    sequence = first[0].header.sequence
    target.expect_push_rejected(
        target.update(sequence=sequence), INVALID, f"sequence {sequence}", "duplicate or replayed"
    )
    target.expect_push_rejected(target.update(sequence=sequence - 1), INVALID, "replayed")


def test_bad_update_after_a_good_one_keeps_only_the_good_one(target: Target):
    before, applied = target.model(), target.applied()
    with pytest.raises(grpc.RpcError) as raised:
        target.push([*target.update(), *target.update(_with_nan(target))])
    assert raised.value.code() == INVALID
    wait_until(lambda: target.applied() == applied + 1, timeout=10, interval=0.02)
    assert target.model() != before
    target.assert_unchanged(target.model(), applied + 1)


def test_client_cancels_mid_payload(target: Target):
    """The client goes away after half the payload: nothing of it is applied
    and the next stream works."""
    chunks = target.update()
    half_sent = threading.Event()
    release = threading.Event()

    def requests() -> Iterator[peer_pb2.Chunk]:
        yield from chunks[:2]
        half_sent.set()
        release.wait(10)

    before, applied = target.model(), target.applied()
    call = target.stub.Push.future(requests(), timeout=10)
    try:
        assert half_sent.wait(5)
        time.sleep(0.2)  # let the server take in what was sent
        call.cancel()
    finally:
        release.set()
    with pytest.raises(grpc.FutureCancelledError):
        call.result()
    target.assert_unchanged(before, applied)
    assert target.push(target.update()).accepted == 1


def test_single_message_over_the_receive_limit(target: Target):
    big = data(b"\0" * (MAX_MESSAGE_BYTES + 1024))
    options = [("grpc.max_send_message_length", 2 * MAX_MESSAGE_BYTES)]
    with grpc.insecure_channel(target.peer.address, options=options) as channel:
        stub = peer_pb2_grpc.PeerStub(channel)
        target.expect_rejected(
            lambda: stub.Push(iter([target.update()[0], big]), timeout=10),
            EXHAUSTED,
            "larger than max",
        )


GARBAGE = [
    pytest.param(b"\xff\xff\xff\xff\x0f", id="invalid-tag"),
    pytest.param(b"\x0a\xff\xff\xff\xff\x0f", id="length-beyond-end"),
    pytest.param(b"\x12\x05ab", id="truncated-bytes-field"),
]


@pytest.mark.parametrize("garbage", GARBAGE)
def test_garbage_bytes(target: Target, garbage: bytes):
    push = target.channel.stream_unary(
        "/dasgd.v1.Peer/Push",
        request_serializer=lambda raw: raw,
        response_deserializer=peer_pb2.PushAck.FromString,
    )
    target.expect_rejected(lambda: push(iter([garbage]), timeout=10), INVALID, "dasgd.v1.Chunk")


def test_pull_with_wrong_run_id(target: Target):
    def pull() -> None:
        list(target.stub.Pull(peer_pb2.PullRequest(run_id="another-run"), timeout=10))

    target.expect_rejected(pull, PRECONDITION, "wrong run id")

    def pull_huge() -> None:
        list(target.stub.Pull(peer_pb2.PullRequest(run_id="r" * HUGE), timeout=10))

    target.expect_rejected(pull_huge, PRECONDITION, "wrong run id")


def test_rejections_are_counted_in_status(target: Target):
    status = target.stub.Status(peer_pb2.StatusRequest(), timeout=5)
    assert status.updates_rejected > 0


# --- bootstrap: Join -----------------------------------------------------------------


@pytest.fixture(scope="module")
def bootstrap() -> Iterator[BootstrapDaemon]:
    daemon = BootstrapDaemon("127.0.0.1:0", ttl=600).start()
    yield daemon
    daemon.stop(grace=0.2)


@pytest.fixture(scope="module")
def membership(bootstrap: BootstrapDaemon) -> Iterator[membership_pb2_grpc.MembershipStub]:
    options = [("grpc.max_send_message_length", 2 * MAX_MESSAGE_BYTES)]
    with grpc.insecure_channel(bootstrap.address, options=options) as channel:
        yield membership_pb2_grpc.MembershipStub(channel)


def _join_request(**fields: object) -> membership_pb2.JoinRequest:
    values: dict[str, object] = dict(run_id="join", member_id="", address="127.0.0.1:7100")
    values.update(fields)
    return membership_pb2.JoinRequest(**values)


BAD_JOINS = [
    pytest.param(dict(run_id=""), INVALID, "run id", id="empty-run-id"),
    pytest.param(dict(run_id="r" * HUGE), INVALID, "run id", id="huge-run-id"),
    pytest.param(dict(run_id="a/b"), INVALID, "run id", id="slash-in-run-id"),
    pytest.param(dict(member_id="x" * 129), INVALID, "member id", id="long-member-id"),
    pytest.param(dict(member_id="p\n1"), INVALID, "member id", id="newline-in-member-id"),
    pytest.param(dict(member_id="é"), INVALID, "member id", id="non-ascii-member-id"),
    pytest.param(dict(address=""), INVALID, "HOST:PORT", id="empty-address"),
    pytest.param(dict(address="127.0.0.1"), INVALID, "HOST:PORT", id="no-port"),
    pytest.param(dict(address="127.0.0.1:0"), INVALID, "port", id="port-0"),
    pytest.param(dict(address="127.0.0.1:70000"), INVALID, "port", id="port-too-big"),
    pytest.param(dict(address="h:" + "9" * 5000), INVALID, "HOST:PORT", id="port-of-5000-digits"),
    pytest.param(dict(address="h:\u00b2"), INVALID, "HOST:PORT", id="superscript-port"),
    pytest.param(dict(address="h:\u0661\u0662"), INVALID, "HOST:PORT", id="arabic-digit-port"),
    pytest.param(dict(address="0.0.0.0:7100"), INVALID, "wildcard", id="wildcard"),
    pytest.param(dict(address="::1:7100"), INVALID, "brackets", id="ipv6-no-brackets"),
    pytest.param(dict(address="[zz]:7100"), INVALID, "IPv6", id="bad-ipv6"),
    pytest.param(dict(address="h" * 300 + ":1"), INVALID, "longer than", id="long-host"),
    pytest.param(dict(address="h" * HUGE + ":1"), INVALID, "longer than", id="huge-host"),
    pytest.param(dict(address="h" * HUGE), INVALID, "HOST:PORT", id="huge-address"),
    pytest.param(dict(member_id="m" * HUGE), INVALID, "member id", id="huge-member-id"),
    pytest.param(dict(address="a b:1"), INVALID, "host", id="space-in-host"),
    pytest.param(
        dict(labels={f"k{i}": "v" for i in range(MAX_LABELS + 1)}),
        INVALID,
        "labels given",
        id="too-many-labels",
    ),
    pytest.param(dict(labels={"": "v"}), INVALID, "label key", id="empty-label-key"),
    pytest.param(dict(labels={"k" * HUGE: "v"}), INVALID, "label key", id="huge-label-key"),
    pytest.param(dict(labels={"k": "v" * 10_000}), INVALID, "value of label", id="huge-label"),
    pytest.param(
        dict(labels={"k": "v" * (MAX_MESSAGE_BYTES + 10)}),
        EXHAUSTED,
        "larger than max",
        id="message-over-limit",
    ),
]


@pytest.mark.parametrize("fields, code, message", BAD_JOINS)
def test_malformed_join(
    bootstrap: BootstrapDaemon,
    membership: membership_pb2_grpc.MembershipStub,
    fields: dict,
    code: grpc.StatusCode,
    message: str,
):
    with pytest.raises(grpc.RpcError) as raised:
        membership.Join(_join_request(**fields), timeout=10)
    assert raised.value.code() == code, raised.value.details()
    assert message in raised.value.details()
    assert len(raised.value.details()) <= MAX_DETAILS
    assert health_status(bootstrap.address) == "SERVING"
    listed = membership.ListMembers(membership_pb2.ListMembersRequest(run_id="join"), timeout=5)
    assert not listed.members


@pytest.mark.parametrize(
    "call, message",
    [
        ("Heartbeat", membership_pb2.HeartbeatRequest(run_id="join", member_id="../x")),
        ("Leave", membership_pb2.LeaveRequest(run_id="", member_id="p-1")),
        ("ListMembers", membership_pb2.ListMembersRequest(run_id="x" * 129)),
    ],
)
def test_malformed_membership_calls(
    bootstrap: BootstrapDaemon,
    membership: membership_pb2_grpc.MembershipStub,
    call: str,
    message: object,
):
    with pytest.raises(grpc.RpcError) as raised:
        getattr(membership, call)(message, timeout=5)
    assert raised.value.code() == INVALID
    assert "invalid" in raised.value.details()
    assert health_status(bootstrap.address) == "SERVING"


@pytest.mark.parametrize("garbage", GARBAGE)
def test_garbage_bytes_to_join(bootstrap: BootstrapDaemon, garbage: bytes):
    with grpc.insecure_channel(bootstrap.address) as channel:
        join = channel.unary_unary(
            "/dasgd.v1.Membership/Join",
            request_serializer=lambda raw: raw,
            response_deserializer=membership_pb2.JoinResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as raised:
            join(garbage, timeout=5)
    assert raised.value.code() == INVALID, raised.value.details()
    assert "dasgd.v1.JoinRequest" in raised.value.details()
    assert health_status(bootstrap.address) == "SERVING"


def _flood(
    stub: membership_pb2_grpc.MembershipStub, requests: list[membership_pb2.JoinRequest]
) -> dict[grpc.StatusCode, int]:
    """Sends all `requests` with up to 64 in flight; counts the outcomes."""
    outcomes: dict[grpc.StatusCode, int] = {}
    for start in range(0, len(requests), 64):
        calls = [stub.Join.future(r, timeout=30) for r in requests[start : start + 64]]
        for call in calls:
            code = call.code()
            outcomes[code] = outcomes.get(code, 0) + 1
    return outcomes


def test_flood_of_joins_to_one_run(bootstrap: BootstrapDaemon, membership):
    extra = 50
    requests = [
        _join_request(run_id="flood", member_id=f"m{i}", address=f"127.0.0.1:{1000 + i}")
        for i in range(MAX_MEMBERS_PER_RUN + extra)
    ]
    outcomes = _flood(membership, requests)
    assert set(outcomes) <= {grpc.StatusCode.OK, EXHAUSTED}, outcomes
    assert outcomes[EXHAUSTED] >= extra
    listed = membership.ListMembers(membership_pb2.ListMembersRequest(run_id="flood"), timeout=10)
    assert len(listed.members) == MAX_MEMBERS_PER_RUN == outcomes[grpc.StatusCode.OK]
    with pytest.raises(grpc.RpcError) as raised:
        membership.Join(_join_request(run_id="flood", member_id="late"), timeout=5)
    assert raised.value.code() == EXHAUSTED
    assert "most allowed" in raised.value.details()
    # A member already in the run can still renew, and other runs are unaffected.
    assert membership.Join(requests[0], timeout=5).member.id == "m0"
    assert joined(membership, "elsewhere", "ok", "127.0.0.1:7100").member.id == "ok"
    assert health_status(bootstrap.address) == "SERVING"


def test_flood_of_joins_creating_runs():
    with BootstrapDaemon("127.0.0.1:0", ttl=600) as daemon, make_channel(daemon.address) as ch:
        stub = membership_pb2_grpc.MembershipStub(ch)
        requests = [_join_request(run_id=f"run{i}") for i in range(MAX_RUNS + 20)]
        outcomes = _flood(stub, requests)
        assert set(outcomes) <= {grpc.StatusCode.OK, EXHAUSTED}, outcomes
        assert outcomes[grpc.StatusCode.OK] == MAX_RUNS
        with pytest.raises(grpc.RpcError) as raised:
            joined(stub, "one-more", "p", "127.0.0.1:7100")
        assert raised.value.code() == EXHAUSTED
        assert "runs" in raised.value.details()
        assert joined(stub, "run0", "second", "127.0.0.1:7101").member.id == "second"
        assert health_status(daemon.address) == "SERVING"


# --- Pull answered by a hostile or broken neighbor ------------------------------------


class _ScriptedPeer(peer_pb2_grpc.PeerServicer):
    """Answers every Pull with the chunks it was given."""

    def __init__(self) -> None:
        self.answer: list[peer_pb2.Chunk] = []

    def Pull(self, request, context):  # noqa: N802 (gRPC method name)
        yield from self.answer


@pytest.fixture(scope="module")
def scripted_peer() -> Iterator[tuple[_ScriptedPeer, str]]:
    servicer = _ScriptedPeer()

    def register(server: grpc.Server) -> list[str]:
        peer_pb2_grpc.add_PeerServicer_to_server(servicer, server)
        return [peer_pb2.DESCRIPTOR.services_by_name["Peer"].full_name]

    handle = start_server("127.0.0.1:0", Security(), register, max_workers=4)
    yield servicer, handle.address
    handle.stop(grace=0.2)


def _overflowing(target: Target) -> list[np.ndarray]:
    arrays = target.gradient()
    arrays[0][0, 0] = 3e38
    return arrays


def _with_nan(target: Target) -> list[np.ndarray]:
    arrays = target.gradient()
    arrays[0][0, 0] = np.nan
    return arrays


PULL_ANSWERS: dict[str, tuple[Callable[[Target], list[peer_pb2.Chunk]], str]] = {
    "nothing": (lambda t: [], "no model"),
    "data-first": (lambda t: t.update()[1:], "data before header"),
    "unknown-codec": (lambda t: t.update(codec=99), "unknown codec 99"),
    "other-tensors": (
        lambda t: t.update(tensors=specs_to_wire(t.peer.specs)[1:]),
        "does not match",
    ),
    "wrong-total": (lambda t: t.update(total_bytes=12), "announces 12"),
    "truncated": (lambda t: t.update()[:-1], "truncated"),
    "overlong": (lambda t: [*t.update(), data(b"\0" * 4)], "overflows"),
    "nan": (lambda t: t.update(_with_nan(t)), "NaN or Inf"),
    "overflowing-scale": (lambda t: t.update(_overflowing(t), scale=4.0), "NaN or Inf"),
}


@pytest.mark.parametrize("case", PULL_ANSWERS)
def test_pulled_model_is_validated(target: Target, scripted_peer, case: str):
    """Warm start pulls from a neighbor: its answer is checked like a Push."""
    servicer, address = scripted_peer
    answer, message = PULL_ANSWERS[case]
    servicer.answer = answer(target)
    with make_channel(address) as channel, pytest.raises(codec.DecodeError, match=message):
        pull_model(channel, RUN_ID, SENDER, target.peer.specs, timeout=10)


def test_a_sender_retrying_the_same_bad_update_is_logged_once(
    target: Target, caplog: pytest.LogCaptureFixture
):
    # Before: one warning per try; a sender with another workload retries
    # every 2 s for as long as both run (8 warnings in 12 s, a line every 2 s).
    caplog.set_level("WARNING", logger="peer.transport")
    before = target.peer.status().updates_rejected
    for run_id in ["retrying-a"] * 3 + ["retrying-b"]:  # names no other test uses
        with pytest.raises(grpc.RpcError):
            target.push([peer_pb2.Chunk(header=target.header(run_id=run_id))])
    logged = [r.getMessage() for r in caplog.records if "rejected update" in r.getMessage()]
    assert len([m for m in logged if "'retrying-a'" in m]) == 1, logged
    assert len([m for m in logged if "'retrying-b'" in m]) == 1, logged
    assert target.peer.status().updates_rejected == before + 4  # all refused and counted
