"""Property-based fuzzing of everything a sender controls before a tensor
reaches the model: the codec, the Push deserializer, header validation and
the Push stream as a whole.

No sockets: the servicer runs against a fake node and a fake gRPC context.
Examples per test are capped so the file runs in well under 30 s; set
DASGD_FUZZ_SCALE (e.g. 20) to multiply them for a longer hunt.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta

import grpc
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dasgd.v1 import peer_pb2
from peer import codec
from peer.codec import TensorSpec
from peer.strategies.base import Incoming
from peer.transport import (
    CODEC_FROM_WIRE,
    MalformedChunk,
    PeerServicer,
    RejectedUpdate,
    data_prefix,
    parse_chunk,
    specs_to_wire,
)

ALLOWED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
UINT64 = st.integers(0, 2**64 - 1)
INT32 = st.integers(-(2**31), 2**31 - 1)
FLOAT32 = st.floats(width=32)  # NaN, +-Inf, subnormals and -0.0 included
FINITE32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
SCALE = float(os.environ.get("DASGD_FUZZ_SCALE", "1"))


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=timedelta(seconds=2),  # generous: the machine may be busy
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def assert_decoded(arrays: list[np.ndarray], specs: list[TensorSpec]) -> None:
    assert len(arrays) == len(specs)
    for array, spec in zip(arrays, specs):
        assert array.shape == spec.shape
        assert array.dtype == np.float32
        assert np.isfinite(array).all()


# --- codec ----------------------------------------------------------------------------------

SPECS = st.lists(
    st.builds(
        TensorSpec, st.sampled_from("abcd"), st.lists(st.integers(0, 4), max_size=3).map(tuple)
    ),
    min_size=1,
    max_size=3,
)
CODEC_NAMES = st.one_of(st.sampled_from(codec.CODECS), st.sampled_from(["", "f32", "RAW", "fp8"]))


@st.composite
def payloads(draw: st.DrawFn) -> tuple[list[TensorSpec], str, bytes]:
    """Specs, codec, and bytes that are usually exactly the right length."""
    specs = draw(SPECS)
    name = draw(CODEC_NAMES)
    size = codec.payload_bytes(specs, name) if name in codec.CODECS else 0
    length = draw(st.one_of(st.just(size), st.integers(0, size + 8)))
    return specs, name, draw(st.binary(min_size=length, max_size=length))


@fuzz(800)
@given(payloads(), st.one_of(st.just(1.0), FLOAT32))
def test_decode_of_arbitrary_bytes(payload, scale: float):
    """Never anything but DecodeError, never a NaN or Inf out."""
    specs, name, raw = payload
    try:
        arrays = codec.decode(raw, specs, name, scale)
    except codec.DecodeError:
        return
    assert_decoded(arrays, specs)


@fuzz(400)
@given(payloads(), st.integers(0, 256), st.lists(st.binary(max_size=24), max_size=4), FLOAT32)
def test_assembler_of_arbitrary_chunks(payload, total: int, pieces: list[bytes], scale: float):
    specs, name, raw = payload
    try:
        assembler = codec.Assembler(specs, name, len(raw) if total % 2 else total, scale)
        for piece in [raw, *pieces] if total % 3 else pieces:
            assembler.add(piece)
        arrays = assembler.arrays()
    except codec.DecodeError:
        return
    assert_decoded(arrays, specs)


@st.composite
def tensors(draw: st.DrawFn, elements: st.SearchStrategy[float] = FINITE32) -> list[np.ndarray]:
    shapes = draw(st.lists(hnp.array_shapes(min_dims=0, max_dims=2, max_side=5), max_size=3))
    return [draw(hnp.arrays(np.float32, shape, elements=elements)) for shape in shapes]


def roundtrip(arrays: list[np.ndarray], name: str) -> tuple[list[np.ndarray], float]:
    """Through the sender's frames (checked against `encode`) and an Assembler."""
    specs = [TensorSpec(f"t{i}", a.shape) for i, a in enumerate(arrays)]
    scale = codec.f16_scale(arrays) if name == codec.F16 else 1.0
    frames = codec.frame_chunks(arrays, name, scale, chunk_bytes=6)
    assert b"".join(frames) == bytes(codec.encode(arrays, name, scale))
    assembler = codec.Assembler(specs, name, sum(map(len, frames)), scale)
    for frame in frames:
        assembler.add(frame)
    return assembler.arrays(), scale


@fuzz(200)
@given(tensors())
def test_raw_roundtrip_is_exact(arrays: list[np.ndarray]):
    out, _ = roundtrip(arrays, codec.RAW_F32)
    assert [a.tobytes() for a in out] == [a.tobytes() for a in arrays]


def within(a: np.ndarray, b: np.ndarray, rel: float, absolute: float) -> bool:
    err = np.abs(b.astype(np.float64) - a.astype(np.float64))
    return bool((err <= rel * np.abs(a.astype(np.float64)) + absolute).all())


def peak(arrays: list[np.ndarray]) -> float:
    return max((float(np.abs(a).max()) for a in arrays if a.size), default=0.0)


BF16_MAX = float(np.array([0x7F7F0000], np.uint32).view(np.float32)[0])


@fuzz(300)
@given(tensors())
def test_fp16_roundtrip_error_is_bounded(arrays: list[np.ndarray]):
    """float16's relative error (plus float32 rounding of the scale) and its
    subnormal step once scaled; the scale keeps every finite float32 finite,
    except within rounding of float32's maximum, where the receiver refuses."""
    try:
        out, scale = roundtrip(arrays, codec.F16)
    except codec.DecodeError:
        assert peak(arrays) > 3.4e38
        return
    for a, b in zip(arrays, out):
        assert within(a, b, 2**-11 + 2**-20, scale * 2**-24), (a, b, scale)


@fuzz(300)
@given(tensors())
def test_bf16_roundtrip_error_is_bounded(arrays: list[np.ndarray]):
    """Beyond bfloat16's range a value rounds to Inf: refused, never applied."""
    try:
        out, _ = roundtrip(arrays, codec.BF16)
    except codec.DecodeError:
        assert peak(arrays) > BF16_MAX
        return
    for a, b in zip(arrays, out):
        assert within(a, b, 2**-8, 2**-133), (a, b)


# --- the Push deserializer ------------------------------------------------------------------


@st.composite
def wire_messages(draw: st.DrawFn) -> bytes:
    """Serialized chunks, the sender's own data frames, and damaged versions."""
    data = draw(st.binary(max_size=300))
    whole = draw(
        st.sampled_from(
            [
                peer_pb2.Chunk(data=data).SerializeToString(),
                data_prefix(len(data)) + data,
                peer_pb2.Chunk(
                    header=peer_pb2.UpdateHeader(run_id=data.hex()[:20])
                ).SerializeToString(),
                b"",
            ]
        )
    )
    damage = draw(st.sampled_from(["none", "cut", "append", "random"]))
    if damage == "cut":
        return whole[: draw(st.integers(0, len(whole)))]
    if damage == "append":
        return whole + draw(st.binary(min_size=1, max_size=12))
    if damage == "random":
        return draw(st.binary(max_size=24))
    return whole


@fuzz(600)
@given(wire_messages())
def test_parse_chunk_agrees_with_protobuf(raw: bytes):
    """The zero-copy path for data chunks means exactly what protobuf would
    parse, and garbage becomes MalformedChunk instead of an exception."""
    try:
        expected = peer_pb2.Chunk.FromString(raw)
    except Exception:
        expected = None
    parsed = parse_chunk(raw)
    if expected is None:
        assert isinstance(parsed, MalformedChunk) and parsed.reason
    elif isinstance(parsed, memoryview):
        assert expected.WhichOneof("payload") == "data"
        assert bytes(parsed) == expected.data
    else:
        assert parsed == expected


# --- header validation ---------------------------------------------------------------------

LOCAL_SPECS = [TensorSpec("fc.weight", (3, 4)), TensorSpec("fc.bias", (3,))]
MEMBERS = ("alice", "bob")
ACCEPTS = frozenset({"GRADIENT", "DELTA"})
RAW_BYTES = codec.payload_bytes(LOCAL_SPECS, codec.RAW_F32)


@dataclass
class FakeNode:
    """The part of a peer daemon the servicer talks to."""

    run_id: str = "fuzz"
    member_id: str = "me"
    specs: list[TensorSpec] = field(default_factory=lambda: list(LOCAL_SPECS))
    accepts: frozenset[str] = ACCEPTS
    max_update_bytes: int = RAW_BYTES
    delivered: list[tuple[Incoming, list[bytes]]] = field(default_factory=list)
    rejections: list[grpc.StatusCode] = field(default_factory=list)

    def is_member(self, member_id: str) -> bool:
        return member_id in MEMBERS

    def deliver(self, update: Incoming) -> bool:
        self.delivered.append((update, [a.tobytes() for a in update.arrays]))
        return True

    def count_rejection(self, code: grpc.StatusCode) -> None:
        self.rejections.append(code)


def _tensor_spec(name: str, shape: Iterable[int], dtype: str) -> peer_pb2.TensorSpec:
    return peer_pb2.TensorSpec(name=name, shape=list(shape), dtype=dtype)


WIRE_SPEC = st.builds(
    _tensor_spec,
    st.one_of(st.sampled_from([s.name for s in LOCAL_SPECS]), st.text(max_size=8)),
    st.one_of(
        st.sampled_from([s.shape for s in LOCAL_SPECS]),
        st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3),
        st.lists(st.integers(0, 5), max_size=3),
    ),
    st.sampled_from(["float32", "float16", "bfloat16", "", "float32 ", "int8"]),
)


@st.composite
def wire_tensors(draw: st.DrawFn) -> list[peer_pb2.TensorSpec]:
    if draw(st.booleans()):
        tensors = specs_to_wire(LOCAL_SPECS)
        tensors[draw(st.integers(0, len(tensors) - 1))] = draw(WIRE_SPEC)
        return tensors
    return draw(st.lists(WIRE_SPEC, max_size=3))


# What a field may be changed to; each is anything its wire type can hold.
MUTATIONS: dict[str, st.SearchStrategy] = {
    "run_id": st.text(max_size=8),
    "sender_id": st.text(max_size=8),
    "sequence": UINT64,
    "kind": INT32,
    "vector_clock": st.dictionaries(st.text(max_size=4), UINT64, max_size=3),
    "tensors": wire_tensors(),
    "codec": INT32,
    "scale": FLOAT32,
    "total_bytes": st.one_of(UINT64, st.integers(0, 2 * RAW_BYTES)),
    "round": UINT64,
    "clock_ticks": st.one_of(UINT64, st.integers(0, 2_000_000)),
    "sender_address": st.text(max_size=8),
}


@st.composite
def headers(draw: st.DrawFn, sequences: st.SearchStrategy[int] = UINT64) -> peer_pb2.UpdateHeader:
    """A valid header with up to three fields changed to anything, so that
    examples reach every check rather than failing the first."""
    wire_codec = draw(st.sampled_from(sorted(CODEC_FROM_WIRE)))
    header = peer_pb2.UpdateHeader(
        run_id="fuzz",
        sender_id=draw(st.sampled_from(MEMBERS)),
        sequence=draw(sequences),
        kind=peer_pb2.UpdateKind.Value(draw(st.sampled_from(sorted(ACCEPTS)))),
        tensors=specs_to_wire(LOCAL_SPECS),
        codec=wire_codec,
        scale=1.0,
        total_bytes=codec.payload_bytes(LOCAL_SPECS, CODEC_FROM_WIRE[wire_codec]),
        clock_ticks=1,
    )
    for name in draw(st.lists(st.sampled_from(sorted(MUTATIONS)), max_size=3, unique=True)):
        value = draw(MUTATIONS[name])
        if name == "tensors":
            del header.tensors[:]
            header.tensors.extend(value)
        elif name == "vector_clock":
            header.vector_clock.clear()
            header.vector_clock.update(value)
        else:
            setattr(header, name, value)
    return header


@fuzz(600)
@given(st.lists(headers(st.integers(0, 5)), min_size=1, max_size=4))
def test_check_header_accepts_only_what_fits_the_local_model(batch: list[peer_pb2.UpdateHeader]):
    """Several headers per example through one servicer, so the sequence
    check sees repeats and gaps."""
    node = FakeNode()
    servicer = PeerServicer(node)
    last_sequence: dict[str, int] = {}
    for header in batch:
        try:
            assembler = servicer.check_header(header)
        except RejectedUpdate as rejected:
            assert rejected.code in ALLOWED, rejected.code
            assert 0 < len(rejected.message) < 1024
            continue
        wire_codec = CODEC_FROM_WIRE[header.codec]
        assert header.run_id == node.run_id and node.is_member(header.sender_id)
        assert peer_pb2.UpdateKind.Name(header.kind) in node.accepts
        assert [(t.name, tuple(t.shape), t.dtype) for t in header.tensors] == [
            (s.name, s.shape, s.dtype) for s in LOCAL_SPECS
        ]
        assert header.total_bytes == codec.payload_bytes(LOCAL_SPECS, wire_codec)
        assert header.total_bytes <= node.max_update_bytes
        assert 1 <= header.clock_ticks <= 1_000_000 and np.isfinite(header.scale)
        assert header.sequence > last_sequence.get(header.sender_id, 0)
        last_sequence[header.sender_id] = header.sequence
        assert assembler.specs == LOCAL_SPECS and assembler.codec == wire_codec


# --- the Push stream -----------------------------------------------------------------------


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self.code = code


class FakeContext:
    trailing_metadata = ()

    def set_trailing_metadata(self, metadata) -> None:
        self.trailing_metadata = tuple(metadata)

    def abort(self, code: grpc.StatusCode, details: str):
        raise Aborted(code, details)


def frame(chunk: peer_pb2.Chunk) -> bytes:
    return chunk.SerializeToString()


@st.composite
def updates(draw: st.DrawFn) -> list[bytes]:
    """A header and, in two chunks, a payload of the size it announces
    (zeros, finite values or random bytes)."""
    header = draw(headers(st.integers(1, 40)))
    size = header.total_bytes if header.total_bytes <= 2 * RAW_BYTES else 8
    payload = draw(
        st.one_of(st.binary(min_size=size, max_size=size), st.just(bytes(size)))
        if header.codec not in CODEC_FROM_WIRE or size != header.total_bytes
        else st.one_of(
            st.binary(min_size=size, max_size=size),
            st.just(bytes(size)),
            hnp.arrays(np.float32, size // codec.BYTES_PER_VALUE[CODEC_FROM_WIRE[header.codec]],
                       elements=st.floats(-1e4, 1e4, width=32)).map(
                lambda a: bytes(codec.encode([a], CODEC_FROM_WIRE[header.codec]))
            ),
        )
    )  # fmt: skip
    cut = draw(st.integers(0, len(payload)))
    first, second = payload[:cut], payload[cut:]
    return [
        frame(peer_pb2.Chunk(header=header)),
        data_prefix(len(first)) + first,
        frame(peer_pb2.Chunk(data=second)),
    ]


STREAM_ITEMS = st.one_of(
    updates(),
    updates().map(lambda frames: frames[:-1]),  # truncated
    headers(st.integers(1, 40)).map(lambda h: [frame(peer_pb2.Chunk(header=h))]),
    st.binary(max_size=16).map(lambda b: [frame(peer_pb2.Chunk(data=b))]),
    st.just([b""]),  # an empty Chunk
    st.binary(min_size=1, max_size=12).map(lambda b: [b]),  # maybe garbage
)


@fuzz(400)
@given(st.lists(STREAM_ITEMS, max_size=4).map(lambda items: [f for i in items for f in i]))
def test_push_delivers_only_complete_finite_updates(stream: list[bytes]):
    """Push, fed through its real deserializer, either delivers complete,
    finite updates of the local model's shape or aborts with an allowed
    code; what it delivered is not overwritten by what came after."""
    node = FakeNode()
    try:
        ack = PeerServicer(node).Push(map(parse_chunk, stream), FakeContext())
    except Aborted as aborted:
        assert aborted.code in ALLOWED, aborted.code
        assert node.rejections == [aborted.code]
    else:
        assert ack.accepted == len(node.delivered)
        assert not node.rejections
    assert len(node.delivered) <= len(stream) // 2
    for update, snapshot in node.delivered:
        assert update.sender in MEMBERS and update.kind in node.accepts
        assert_decoded(update.arrays, LOCAL_SPECS)
        assert 1 <= update.clock_ticks <= 1_000_000
        assert [a.tobytes() for a in update.arrays] == snapshot


def test_push_harness_delivers_a_valid_stream():
    """The property above is not vacuous: a valid stream is delivered."""
    arrays = [np.full(s.shape, 0.5, np.float32) for s in LOCAL_SPECS]
    header = peer_pb2.UpdateHeader(
        run_id="fuzz",
        sender_id="alice",
        sequence=1,
        kind=peer_pb2.GRADIENT,
        tensors=specs_to_wire(LOCAL_SPECS),
        codec=peer_pb2.F16,
        total_bytes=codec.payload_bytes(LOCAL_SPECS, codec.F16),
        clock_ticks=1,
    )
    frames = codec.frame_chunks(arrays, codec.F16, chunk_bytes=8, prefix=data_prefix)
    node = FakeNode()
    stream = [frame(peer_pb2.Chunk(header=header)), *frames]
    ack = PeerServicer(node).Push(map(parse_chunk, stream), FakeContext())
    assert ack.accepted == 1
    [(update, _)] = node.delivered
    assert all((a == 0.5).all() for a in update.arrays)
