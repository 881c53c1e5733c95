"""The wire: the Peer gRPC service (receiving) and per-neighbor senders.

Receiving: a Push stream carries header, data chunks, next header, ... Each
header is validated against the local model before one data byte is
accepted; the payload is assembled into a buffer sized from the local model,
checked for NaN/Inf, and only then handed to the trainer's inbox. A bad
update aborts the stream with a status that says what was wrong; nothing of
it reaches the model.

Push bypasses protobuf objects for the payload, because at ~1 GB/s every
copy of 100 MB shows: the sender hands gRPC ready-made Chunk wire bytes
(`OutboundMessage.wire_frames`), and the server's request deserializer
(`parse_chunk`) returns a data chunk as a view of the received bytes, so a
chunk is copied once into its message and once into the assembly buffer.
Header chunks and anything unusual go through protobuf as before.

Sending: each neighbor has a sender thread with a bounded queue and one
long-lived Push stream (a new RPC per update costs ~3x the CPU). The trainer
only enqueues — the header is made and the arrays encoded on the sender's
thread, once for all neighbors. Summable updates (gradients, deltas,
commits) are summed rather than queued one by one: a broadcast that no
sender has started on absorbs the next one, updates queued behind each other
leave as one, and a sender starts at most one update per
MIN_SEND_INTERVAL_S (all senders together at most MAX_SEND_RATE per second);
when a queue is full anyway, a summable update is added into the queued one
of its kind and a snapshot replaces the older snapshot. So memory stays
bounded, a fast trainer does not spend its cores on per-message overhead,
and it never waits for a slow or dead neighbor; every sum and every drop is
counted. An update that fits one chunk travels inside its header's message.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Protocol

import grpc
import numpy as np
from google.protobuf.message import DecodeError as ProtobufDecodeError

from dasgd.v1 import membership_pb2, peer_pb2, peer_pb2_grpc
from peer import codec
from peer.bounded import put_recent
from peer.codec import TensorSpec
from peer.strategies.base import (
    BUFFERS,
    CENTER_COMMIT,
    DELTA,
    GRADIENT,
    MODEL,
    ROUND_MODEL,
    Incoming,
)
from rpc.server import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

CODEC_TO_WIRE = {
    codec.RAW_F32: peer_pb2.RAW_F32,
    codec.F16: peer_pb2.F16,
    codec.BF16: peer_pb2.BF16,
}
CODEC_FROM_WIRE = {v: k for k, v in CODEC_TO_WIRE.items()}
SUMMABLE = frozenset({GRADIENT, DELTA, CENTER_COMMIT})
REPLACEABLE = frozenset({MODEL, ROUND_MODEL})
PEER_SERVICE = peer_pb2.DESCRIPTOR.services_by_name["Peer"].full_name
PUSH_METHOD = f"/{PEER_SERVICE}/Push"
# Chunk.data on the wire: field 2, wire type 2 (length-delimited).
DATA_TAG = 0x12
# Chunk.header (field 1) and UpdateHeader.inline_payload (field 13), both
# length-delimited.
HEADER_TAG = 0x0A
INLINE_PAYLOAD_TAG = 13 << 3 | 2
# A sender starts at most one update per interval on each stream; what the
# trainer produces meanwhile is summed into one. A small update costs ~0.2 ms
# of CPU in Python and gRPC whatever its size, so a model that steps in well
# under a millisecond would otherwise spend a core on messaging; steps of
# real models are far longer than this, and for them it changes nothing.
MIN_SEND_INTERVAL_S = 0.01
# And all streams together start at most this many updates per second: each
# costs ~0.3 ms of interpreter-lock time however small it is, so with K
# neighbors a fast trainer would otherwise lose K x 3% of its time at one
# update per 10 ms per stream (bench/overlap.py, bench/sender_cost.py).
# 100/s keeps that near 3%; with K neighbors each stream sends at most every
# K/100 s.
MAX_SEND_RATE = 100.0
# Room for the tag and length of a data chunk within one gRPC message.
MAX_CHUNK_BYTES = MAX_MESSAGE_BYTES - 16
# Sequences, rounds and vector clock entries a peer takes from others stay
# below this, so the counts it adds to them never leave uint64 (a header
# with round 2**64 - 1 would otherwise make the next round unsendable).
MAX_COUNTER = 1 << 62
# Trailing metadata of a Push refused for its sequence: the last sequence the
# receiver has from that sender, so the sender can go on above it.
LAST_SEQUENCE_KEY = "dasgd-last-sequence"
# The same rejection is logged at most once per this many seconds (counted).
REJECTION_LOG_INTERVAL_S = 60.0
# A Push stream confirms what it carried only when it ends (PushAck), so a
# sender keeps the summable updates (gradients, deltas, commits) a stream has
# carried until then, to send again should it fail; the receiver drops those
# it has (`UpdateHeader.resent`). A stream ends once it has carried this many
# updates or bytes, which bounds what is kept.
MAX_UNCONFIRMED_UPDATES = 64
MAX_UNCONFIRMED_BYTES = 64 << 20
# A failed stream's updates are sent again after these failures, whatever
# their number (the network or the receiver is away for a while) ...
RESEND_ALWAYS = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)
# ... at most this many times after others that may pass (a full inbox, a
# receiver that does not know this peer yet), and never after a refusal of
# the update itself (invalid, unauthenticated): it would be refused again.
MAX_RESENDS = 3
NEVER_RESEND = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


def kind_name(kind: int) -> str:
    return peer_pb2.UpdateKind.Name(kind)


def specs_to_wire(specs: Sequence[TensorSpec]) -> list[peer_pb2.TensorSpec]:
    return [peer_pb2.TensorSpec(name=s.name, shape=list(s.shape), dtype=s.dtype) for s in specs]


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@lru_cache(maxsize=256)
def data_prefix(size: int) -> bytes:
    """Wire bytes that make a `size`-byte payload a serialized Chunk{data}."""
    return bytes([DATA_TAG]) + _varint(size)


def inline_header_prefix(header: peer_pb2.UpdateHeader, payload_size: int) -> bytes:
    """Wire bytes that, followed by a `payload_size`-byte payload, make
    Chunk{header} with that payload as the header's inline_payload: the field
    is appended to the serialized header by hand (protobuf accepts fields in
    any order), so the payload can go straight from the tensors into the
    frame, as data chunks do."""
    fields = header.SerializeToString()
    inline = bytes([INLINE_PAYLOAD_TAG]) + _varint(payload_size)
    size = len(fields) + len(inline) + payload_size
    return b"".join((bytes([HEADER_TAG]), _varint(size), fields, inline))


def header_frame(header: peer_pb2.UpdateHeader, inline_payload: bytes = b"") -> bytes:
    """Chunk{header}, carrying `inline_payload` if one is given."""
    if not inline_payload:
        return peer_pb2.Chunk(header=header).SerializeToString()
    return inline_header_prefix(header, len(inline_payload)) + inline_payload


@dataclass
class UpdateInfo:
    """What differs between one update and the next. The trainer fills in
    only this; the protobuf header is made on the sender's thread."""

    kind: str
    sequence: int
    clock: dict[str, int]
    clock_ticks: int = 1
    round: int = 0
    resends: int = 0  # times sent again after a stream failed (`UpdateHeader.resent`)


class OutboundMessage:
    """One update to send, encoded at most once however many neighbors get it.

    `template` holds the header fields all updates of a sender share; the
    rest of the header is made from `info` on the sender's thread. With one
    recipient the wire frames are made as they are sent (one chunk in memory
    at a time); with several, the first sender makes them all and the others
    send the same bytes.
    """

    def __init__(
        self,
        template: peer_pb2.UpdateHeader,
        info: UpdateInfo,
        arrays: list[np.ndarray],
        codec_name: str,
        recipients: int = 1,
    ):
        self.template = template
        self.info = info
        self.arrays = arrays
        self.codec_name = codec_name
        self.recipients = recipients
        self.taken = False  # a sender has started on it: its content is final
        self._owns_arrays = False  # may be summed into in place
        self._header: peer_pb2.UpdateHeader | None = None
        self._scale_settled = False
        self.restarted = False  # sent partly, then again with an fp16 scale
        self._frames: tuple[int, list[bytes]] | None = None
        self._lock = threading.Lock()

    @property
    def kind(self) -> str:
        return self.info.kind

    @property
    def header(self) -> peer_pb2.UpdateHeader:
        """The complete header (scale and size filled in): made on first use."""
        with self._lock:
            return self._prepared_header()

    def _prepared_header(self) -> peer_pb2.UpdateHeader:
        if self._header is None:
            info = self.info
            header = peer_pb2.UpdateHeader()
            header.CopyFrom(self.template)
            header.kind = peer_pb2.UpdateKind.Value(info.kind)
            header.sequence = info.sequence
            header.vector_clock.update(info.clock)
            header.clock_ticks = info.clock_ticks
            header.round = info.round
            header.resent = info.resends > 0
            arrays = self.arrays
            # fp16 goes out at scale 1 and each chunk is checked as it is
            # made (`_all_frames`, `_stream`): a pass over the whole update
            # to find its peak would cost more than the check, for the rare
            # update with a value beyond 65504.
            header.scale = 1.0
            width = codec.BYTES_PER_VALUE[self.codec_name]
            header.total_bytes = sum(a.size for a in arrays) * width
            self._header = header
        return self._header

    def take(self) -> OutboundMessage:
        """Marks the message as being sent (no more `try_add`)."""
        with self._lock:
            self.taken = True
        return self

    def wire_frames(self, chunk_bytes: int = codec.DEFAULT_CHUNK_BYTES) -> Iterator[bytes]:
        """Serialized Chunks for Push: the header, then the data chunks."""
        with self._lock:
            self.taken = True
            if self._frames is not None and self._frames[0] == chunk_bytes:
                return iter(self._frames[1])
            header = self._prepared_header()
            if header.total_bytes + header.ByteSize() <= chunk_bytes:
                # Small enough for one message: every message costs the
                # sender's and the receiver's interpreter a fixed ~0.1 ms.
                # (A model without parameters has no payload to inline.)
                inline = partial(inline_header_prefix, header)  # serializes it per call
                frames = self._all_frames(chunk_bytes, inline) or [header_frame(header)]
            elif self.recipients > 1:
                data = self._all_frames(chunk_bytes)  # first: it may settle the scale
                frames = [header_frame(header), *data]
            else:
                return self._stream(chunk_bytes)
            if self.recipients > 1:
                self._frames = (chunk_bytes, frames)
            return iter(frames)

    def _data_frames(
        self, chunk_bytes: int, prefix: Callable[[int], bytes] = data_prefix
    ) -> Iterator[bytes]:
        scale = self._header.scale or 1.0
        return codec.iter_frames(
            self.arrays, self.codec_name, scale, chunk_bytes, prefix, check_f16=not self._settled
        )

    @property
    def _settled(self) -> bool:
        """The header's scale is known to suit every value (always but fp16)."""
        return self.codec_name != codec.F16 or self._scale_settled

    def settle_scale(self) -> None:
        """Gives the header the scale that keeps every fp16 value finite."""
        if not self._settled:
            self._prepared_header().scale = codec.f16_scale(self.arrays)
            self._scale_settled = True

    def _all_frames(
        self, chunk_bytes: int, prefix: Callable[[int], bytes] = data_prefix
    ) -> list[bytes]:
        """Every data frame, made before any is sent: an fp16 overflow found
        on the way just means making them again with the settled scale."""
        try:
            return list(self._data_frames(chunk_bytes, prefix))
        except codec.F16Overflow:
            self.settle_scale()
            return list(self._data_frames(chunk_bytes, prefix))

    def _stream(self, chunk_bytes: int) -> Iterator[bytes]:
        """Header and frames made as they are sent. If an fp16 chunk
        overflows after some went out, the update starts over: the same
        header (same sequence) with the settled scale, which tells the
        receiver to drop what it has of it."""
        yield header_frame(self._header)
        try:
            yield from self._data_frames(chunk_bytes)
        except codec.F16Overflow:
            self.settle_scale()
            self.restarted = True
            yield header_frame(self._header)
            yield from self._data_frames(chunk_bytes)

    def coalescible_with(self, other: OutboundMessage) -> bool:
        return not other.info.resends and self.coalescible_with_kind(other.kind, other.info.round)

    def coalescible_with_kind(self, kind: str, round_: int) -> bool:
        """Whether a new update of `kind` for `round_` may be summed into this one."""
        # A resent update may have arrived already: summed with another,
        # the receiver could neither drop it nor take it.
        return (
            self.kind in SUMMABLE
            and kind == self.kind
            and round_ == self.info.round
            and not self.info.resends
        )

    def private_copy(self) -> OutboundMessage:
        """A copy this sender alone may change (the original may be queued
        for other neighbors too); the arrays are copied on the first sum."""
        info = UpdateInfo(**vars(self.info))
        return OutboundMessage(self.template, info, self.arrays, self.codec_name)

    def unshared(self) -> OutboundMessage:
        """This message if it goes to one neighbor only, else a `private_copy`:
        one the calling sender may change."""
        return self.private_copy() if self.recipients > 1 else self

    def absorb(self, newer: OutboundMessage) -> None:
        """Adds a newer summable update to this one, which nobody sends yet
        and only the caller can reach. The sum takes the newer sequence number
        and, per member, the older clock entry (it is as stale as its oldest
        part)."""
        theirs = newer.info
        self.add(newer.arrays, theirs.clock, theirs.clock_ticks, theirs.sequence)

    def add(
        self, arrays: list[np.ndarray], clock: dict[str, int], clock_ticks: int, sequence: int
    ) -> None:
        """`absorb` of an update given by its parts (no message made for it)."""
        mine = self.info
        older = mine.clock
        # A peer's clock only grows, so the newer clock is usually at or
        # above the older one everywhere and the sum keeps the older clock.
        if clock.keys() != older.keys() or any(clock[m] < t for m, t in older.items()):
            mine.clock = {
                member: min(older.get(member, 0), clock.get(member, 0))
                for member in older.keys() | clock.keys()
            }
        mine.clock_ticks += clock_ticks
        mine.sequence = sequence
        if not self._owns_arrays:  # the strategy may still hold these
            self.arrays = [np.array(a, dtype=np.float32, copy=True) for a in self.arrays]
            self._owns_arrays = True
        for total, part in zip(self.arrays, arrays):
            total += part

    def try_add(
        self, arrays: list[np.ndarray], clock: dict[str, int], clock_ticks: int, sequence: int
    ) -> bool:
        """`add` unless a sender has already started on this message.

        Never waits: the lock is busy only while a sender takes the message
        or makes its frames (encoding 40 MB takes tens of ms), and then it is
        taken anyway; the caller (the training thread) sends a new one."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            if self.taken:
                return False
            self.add(arrays, clock, clock_ticks, sequence)
            return True
        finally:
            self._lock.release()

    def merged_with(self, newer: OutboundMessage) -> OutboundMessage:
        """Sum of two summable updates, as a new message (see `absorb`)."""
        merged = self.private_copy()
        merged.absorb(newer)
        return merged


def out_of_range_counter(header: peer_pb2.UpdateHeader) -> str:
    """Why a header's round, sequence or clock is out of range ("" if not)."""
    if header.round >= MAX_COUNTER:
        return f"round {header.round} out of range (at most {MAX_COUNTER - 1})"
    if header.sequence >= MAX_COUNTER:
        return f"sequence {header.sequence} out of range (at most {MAX_COUNTER - 1})"
    for member, count in header.vector_clock.items():
        if count >= MAX_COUNTER:
            return (
                f"vector clock entry {shown(member)}: {count} out of range "
                f"(at most {MAX_COUNTER - 1})"
            )
    return ""


def _last_sequence_of(error: grpc.RpcError) -> int | None:
    """The receiver's last sequence from us, if it refused a Push for its sequence."""
    trailing = getattr(error, "trailing_metadata", lambda: None)() or ()
    for key, value in trailing:
        if key == LAST_SEQUENCE_KEY:
            try:
                return min(int(value), MAX_COUNTER)  # room to go on above it
            except ValueError:
                return None
    return None


def push_method(channel: grpc.Channel) -> grpc.StreamUnaryMultiCallable:
    """Push that takes the wire bytes of each Chunk (`OutboundMessage.wire_frames`)."""
    return channel.stream_unary(
        PUSH_METHOD, request_serializer=None, response_deserializer=peer_pb2.PushAck.FromString
    )


@dataclass
class SenderStats:
    sent: int = 0
    bytes_sent: int = 0
    dropped: int = 0
    errors: int = 0
    resent: int = 0  # updates sent again after a stream failed
    # Two counters with one writer each, so neither needs a lock: sums the
    # sender made in its queue, and broadcasts the Outbox added into one this
    # sender had not started on yet (on the trainer's thread, every step).
    queue_coalesced: int = 0
    broadcast_coalesced: int = 0

    @property
    def coalesced(self) -> int:
        return self.queue_coalesced + self.broadcast_coalesced


class NeighborSender:
    """Bounded queue + thread + one long-lived Push stream to one neighbor."""

    def __init__(
        self,
        member_id: str,
        address: str,
        channel: grpc.Channel,
        max_queue: int = 8,
        chunk_bytes: int = codec.DEFAULT_CHUNK_BYTES,
        idle_close_s: float = 30.0,
        link_up: Callable[[], bool] = lambda: True,
        min_interval_s: float = MIN_SEND_INTERVAL_S,
        sequence_above: Callable[[int], int] | None = None,
        release_due: Callable[[], None] = lambda: None,
    ):
        self.member_id = member_id
        # Lets the Outbox's held broadcast out once it is due (`Outbox.send`).
        self._release_due = release_due
        # A fresh sequence above the given one, from the Outbox's counter.
        self._sequence_above = sequence_above or (lambda floor: floor + 1)
        # The highest sequence this stream carried, or the receiver has.
        self._sent_sequence = 0
        self.min_interval_s = min_interval_s  # Outbox adjusts it as neighbors come and go
        # Fault injection: while False, nothing is sent (the queue coalesces).
        self._link_up = link_up
        self.address = address
        self._channel = channel
        self._push = push_method(channel)
        self._queue: deque[OutboundMessage] = deque()
        self._max_queue = max_queue
        self._chunk_bytes = chunk_bytes
        self._idle_close_s = idle_close_s
        self._cond = threading.Condition()
        self._closing = False
        self._flush_deadline = 0.0
        self._call: grpc.Future | None = None
        self._stream = 0  # generation of the Push stream (see _end_stream)
        # Summable updates the current stream carried: sent again if it fails
        # (MAX_UNCONFIRMED_UPDATES); under self._cond.
        self._unconfirmed: list[OutboundMessage] = []
        self._unconfirmed_bytes = 0
        self.stats = SenderStats()
        self.last_error = ""
        self._thread = threading.Thread(target=self._run, name=f"send-{member_id}", daemon=True)
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def count_coalesced(self, count: int = 1) -> None:
        """Called by the Outbox alone (under its lock) when a broadcast for
        this sender absorbed newer ones."""
        self.stats.broadcast_coalesced += count

    def offer(self, message: OutboundMessage) -> None:
        """Enqueues without ever blocking; coalesces or drops when full."""
        with self._cond:
            if self._closing:
                return
            if len(self._queue) >= self._max_queue:
                self._make_room(message)
            else:
                self._queue.append(message)
            self._cond.notify()

    def _make_room(self, message: OutboundMessage) -> None:
        if message.kind in SUMMABLE:
            for queued in reversed(self._queue):
                if queued.coalescible_with(message):
                    self._queue.remove(queued)
                    queued = queued.unshared()
                    # Final from now on: the Outbox must not add later
                    # gradients to `message`, which this queue will not send.
                    queued.absorb(message.take())
                    self._queue.append(queued)
                    self.stats.queue_coalesced += 1
                    return
        if message.kind in REPLACEABLE:
            for queued in self._queue:
                if queued.kind == message.kind:
                    self._queue.remove(queued)
                    break
            else:
                self._queue.popleft()
        else:
            self._queue.popleft()
        self.stats.dropped += 1
        self._queue.append(message)

    def close(self, flush_timeout: float = 0.0) -> None:
        """Stops the sender; first tries for `flush_timeout` s to send what is queued."""
        with self._cond:
            self._closing = True
            self._flush_deadline = time.monotonic() + flush_timeout
            self._cond.notify_all()
        self._thread.join(flush_timeout + 1.0)
        call = self._call  # the sender thread may clear it meanwhile
        if call is not None:
            call.cancel()
        self._channel.close()

    def _next_message(self, timeout: float, stream: int | None = None) -> OutboundMessage | None:
        """The next update to send (what queued behind it summed in), or None
        after `timeout`, on close, or once `stream` (a generation of the Push
        stream) has ended: gRPC would drop what an ended stream takes."""
        # Every sender comes here once its pause after a broadcast is over,
        # which is when the Outbox's next one is due: should the trainer
        # have stopped sending meanwhile, what it holds goes out now.
        self._release_due()
        with self._cond:
            end = time.monotonic() + timeout
            while True:
                if stream is not None and stream != self._stream:
                    return None
                if self._queue:
                    break
                remaining = end - time.monotonic()
                if self._closing or remaining <= 0:
                    return None
                self._cond.wait(remaining)
            if self._closing and time.monotonic() > self._flush_deadline:
                return None
            message = self._queue.popleft().take()
            # Updates that piled up while the last one was on the wire go
            # out as one: fewer messages, and the newest sooner.
            parts = []
            while self._queue and message.coalescible_with(self._queue[0]):
                parts.append(self._queue.popleft().take())
            self.stats.queue_coalesced += len(parts)
        # Summed outside the lock: `offer`, on the training thread, needs it.
        if parts:
            message = message.unshared()
        for part in parts:
            message.absorb(part)
        if message.info.sequence <= self._sent_sequence and not message.info.resends:
            # Queued before this stream went above it: a sequence of its
            # own, so the receiver sees them strictly increasing. (One sent
            # again keeps its own, by which the receiver knows it.)
            message = message.unshared()
            message.info.sequence = self._sequence_above(self._sent_sequence)
        if stream is not None:
            with self._cond:
                if stream != self._stream:
                    self._queue.appendleft(message)  # for the next stream
                    return None
                self._keep_until_confirmed(message)
        return message

    def _keep_until_confirmed(self, message: OutboundMessage) -> None:
        """Under self._cond: the current stream carries `message`."""
        if message.kind in SUMMABLE:
            self._unconfirmed.append(message)
            self._unconfirmed_bytes += sum(a.nbytes for a in message.arrays)

    def _stream_should_end(self) -> bool:
        """The stream has carried enough unconfirmed updates: it ends, and
        its PushAck confirms them."""
        return (
            len(self._unconfirmed) >= MAX_UNCONFIRMED_UPDATES
            or self._unconfirmed_bytes >= MAX_UNCONFIRMED_BYTES
        )

    def _confirmed(self) -> None:
        with self._cond:
            self._unconfirmed, self._unconfirmed_bytes = [], 0

    def _send_again(self, code: grpc.StatusCode, refused_for_sequence: bool) -> None:
        """Puts what the failed stream carried back at the head of the queue,
        marked as sent again (the receiver drops those it has), or drops it."""
        with self._cond:
            carried, self._unconfirmed, self._unconfirmed_bytes = self._unconfirmed, [], 0
            again = []
            for message in carried:
                copy = message.private_copy()  # others may send the original
                if refused_for_sequence and not message.info.resends:
                    # The receiver has later sequences from this member id
                    # (a restart with the clock set back): it refused this
                    # one, and took none after it. It goes as a new update.
                    pass
                elif code in NEVER_RESEND or (
                    code not in RESEND_ALWAYS and message.info.resends >= MAX_RESENDS
                ):
                    self.stats.dropped += 1
                    continue
                else:
                    copy.info.resends += 1
                again.append(copy)
            self._queue.extendleft(reversed(again))
            self.stats.resent += len(again)

    def _requests(self, first: OutboundMessage, stream: int) -> Iterator[bytes]:
        message: OutboundMessage | None = first
        while message is not None:
            started = time.monotonic()
            self._sent_sequence = max(self._sent_sequence, message.info.sequence)
            yield from message.wire_frames(self._chunk_bytes)
            self.stats.sent += 1
            self.stats.bytes_sent += message.header.total_bytes
            pause = started + self.min_interval_s - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # what arrives meanwhile goes out as one update
            if self._stream_should_end():
                return
            message = self._next_message(self._idle_close_s, stream)
            if message is not None and not self._link_up():
                with self._cond:
                    if self._unconfirmed and self._unconfirmed[-1] is message:
                        self._unconfirmed_bytes -= sum(a.nbytes for a in message.arrays)
                        self._unconfirmed.pop()  # not carried after all
                    self._queue.appendleft(message)
                return

    def _end_stream(self) -> None:
        """The Push stream ended: its request iterator, which gRPC may still
        have waiting for the next update, must not take one."""
        with self._cond:
            self._stream += 1
            self._cond.notify_all()

    def _run(self) -> None:
        backoff = 0.2
        while True:
            if not self._link_up() and not self._closing:
                time.sleep(0.1)
                continue
            first = self._next_message(0.5)
            if first is None:
                if self._closing:
                    return
                continue
            try:
                try:
                    with self._cond:
                        self._keep_until_confirmed(first)
                    self._call = call = self._push.future(self._requests(first, self._stream))
                    # Not call.result() alone: it waits on the call's
                    # condition, which gRPC notifies on every message sent,
                    # so this thread would wake (and take the interpreter
                    # lock from the trainer) once per message for nothing.
                    finished = threading.Event()
                    call.add_done_callback(lambda _call, done=finished: done.set())
                    finished.wait()
                    call.result()
                    self._confirmed()
                finally:
                    # Before any back-off: what is queued meanwhile waits
                    # for the next stream.
                    self._end_stream()
                    self._call = None
                backoff = 0.2
            except grpc.FutureCancelledError:
                return  # close() cancelled the stream
            except grpc.RpcError as error:
                self.stats.errors += 1
                detail = f"{error.code().name}: {error.details()}"
                if detail != self.last_error:
                    log.warning("push to %s (%s) failed: %s", self.member_id, self.address, detail)
                self.last_error = detail
                if self._closing:
                    return
                floor = _last_sequence_of(error)
                self._send_again(error.code(), refused_for_sequence=floor is not None)
                if floor is not None:
                    # The receiver has later updates from this member id
                    # (this peer restarted with its clock set back): go on
                    # above them, at once.
                    self._sent_sequence = max(self._sent_sequence, floor)
                    continue
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)


class Outbox:
    """The set of senders, one per current neighbor; the trainer's `send`."""

    def __init__(
        self,
        run_id: str,
        member_id: str,
        address: str,
        channel_factory: Callable[[str], grpc.Channel],
        specs: Sequence[TensorSpec],
        codec_name: str = codec.RAW_F32,
        max_queue: int = 8,
        chunk_bytes: int = codec.DEFAULT_CHUNK_BYTES,
        link_up: Callable[[str], bool] = lambda member_id: True,
        min_send_interval_s: float = MIN_SEND_INTERVAL_S,
        max_send_rate: float = MAX_SEND_RATE,
    ):
        if not 0 < chunk_bytes <= MAX_CHUNK_BYTES:
            raise ValueError(
                f"chunk size {chunk_bytes} bytes: must be 1 to {MAX_CHUNK_BYTES} "
                f"(a chunk is one gRPC message, limited to {MAX_MESSAGE_BYTES} bytes)"
            )
        self.run_id = run_id
        self._link_up = link_up
        self.member_id = member_id
        self.address = address
        self._channel_factory = channel_factory
        self._template = peer_pb2.UpdateHeader(
            run_id=run_id,
            sender_id=member_id,
            tensors=specs_to_wire(specs),
            codec=CODEC_TO_WIRE[codec_name],
            sender_address=address,
        )
        self.codec_name = codec_name
        self._max_queue = max_queue
        self._chunk_bytes = chunk_bytes
        self._min_send_interval_s = min_send_interval_s
        self._max_send_rate = max_send_rate
        self._senders: dict[str, NeighborSender] = {}
        # Bytes sent by senders since stopped (neighbors gone), so the total
        # never goes down (it is a Prometheus counter).
        self.retired_bytes_sent = 0
        # The last summable broadcast and whom it went to, while no sender
        # has taken it.
        self._waiting: tuple[OutboundMessage, list[NeighborSender]] | None = None
        # The summable broadcast held back until it is due, and its targets
        # (see `send`).
        self._held: tuple[OutboundMessage, list[NeighborSender]] | None = None
        self._held_sums = 0  # updates summed into the held one, counted when it goes
        self._neighbors_version = 0  # changes with the set of senders
        self._held_version = -1  # the set the held broadcast is for
        self._next_release = 0.0
        self._lock = threading.Lock()
        # Strictly increasing across restarts of this peer, so receivers can
        # refuse replays without remembering incarnations; should the clock
        # be set back, a receiver's refusal tells a sender where to go on
        # (`_sequence_above`).
        self._sequence = time.time_ns() // 1000
        self._sequence_lock = threading.Lock()

    def _sequence_above(self, floor: int) -> int:
        with self._sequence_lock:
            self._sequence = max(self._sequence, floor) + 1
            return self._sequence

    def send_interval_s(self, neighbors: int) -> float:
        """Least time between two updates on one stream, with `neighbors` streams."""
        by_rate = neighbors / self._max_send_rate if self._max_send_rate > 0 else 0.0
        return max(self._min_send_interval_s, by_rate)

    def set_neighbors(self, neighbors: dict[str, str]) -> None:
        """neighbors: member id -> address. Starts and stops senders to match."""
        interval = self.send_interval_s(len(neighbors))
        with self._lock:
            gone = [mid for mid, s in self._senders.items() if neighbors.get(mid) != s.address]
            stopped = [self._senders.pop(mid) for mid in gone]
            self.retired_bytes_sent += sum(s.stats.bytes_sent for s in stopped)
            for mid, address in neighbors.items():
                if mid not in self._senders:
                    self._senders[mid] = NeighborSender(
                        mid,
                        address,
                        self._channel_factory(address),
                        max_queue=self._max_queue,
                        chunk_bytes=self._chunk_bytes,
                        link_up=lambda mid=mid: self._link_up(mid),
                        min_interval_s=interval,
                        sequence_above=self._sequence_above,
                        release_due=self.release_due,
                    )
            for sender in self._senders.values():
                sender.min_interval_s = interval
            self._neighbors_version += 1
        for sender in stopped:
            threading.Thread(target=sender.close, daemon=True).start()

    def senders(self) -> list[NeighborSender]:
        with self._lock:
            return list(self._senders.values())

    def send(
        self,
        kind: str,
        arrays: list[np.ndarray],
        clock: dict[str, int],
        clock_ticks: int = 1,
        round_: int = 0,
        to: str | None = None,
    ) -> None:
        """Hands an update to the senders; on the trainer's thread, so it only
        queues (the header is made and the arrays encoded by the senders).

        Summable broadcasts (gradients, deltas) are summed here, on the
        trainer's thread, into one message per send interval, which goes to
        every neighbor at once when it is due. A sender that took a
        broadcast while the others were still busy with the last one would
        otherwise leave them two messages to sum on their threads, and each
        such sum takes the interpreter lock from the trainer a few more
        times. A broadcast that has gone out but that no sender has taken
        yet (all are behind) is summed into as well: one sum for all
        neighbors, and none falls further behind. Other updates go out at
        once.
        """
        if (
            to is None
            and kind in SUMMABLE
            and self._sum_into_held(kind, arrays, clock, clock_ticks, round_)
        ):
            return
        info = UpdateInfo(kind, self._next_sequence(), clock, clock_ticks, round_)
        now = time.monotonic()
        offers: list[tuple[OutboundMessage, list[NeighborSender]]] = []
        with self._lock:
            targets = (
                list(self._senders.values())
                if to is None
                else [s for mid, s in self._senders.items() if mid == to]
            )
            if not targets:  # alone: nothing to keep, or to sum into
                self._waiting = self._held = None
                self._held_sums = 0
                return
            message = OutboundMessage(
                self._template, info, arrays, self.codec_name, recipients=len(targets)
            )
            if to is not None or kind not in SUMMABLE:
                # In order: a held broadcast was made before this update.
                offers += self._take_due(now, force=True)
                offers.append((message, targets))
                self._waiting = None
            elif self._sum_into_waiting(kind, round_, arrays, clock, clock_ticks, targets):
                pass
            elif self._held is not None and self._held_summable(kind, round_):
                self._held[0].absorb(message)
                self._held_sums += 1
            else:
                offers += self._take_due(now, force=True)  # other neighbors or round: out now
                self._held = (message, targets)
                self._held_version = self._neighbors_version
            offers += self._take_due(now)
        for message, targets in offers:
            for sender in targets:
                sender.offer(message)

    def _held_summable(self, kind: str, round_: int) -> bool:
        """Whether an update of `kind` and `round_` for every neighbor sums
        into the held broadcast; under self._lock."""
        info = self._held[0].info
        return (
            self._held_version == self._neighbors_version
            and info.kind == kind
            and info.round == round_
        )

    def _sum_into_held(
        self,
        kind: str,
        arrays: list[np.ndarray],
        clock: dict[str, int],
        clock_ticks: int,
        round_: int,
    ) -> bool:
        """`send`'s usual case, kept short because it runs on the trainer's
        thread every step, where Python runs with cold caches (after a step,
        each instruction costs about three times what it does in a loop): a
        summable broadcast that comes before the held one is due is added to
        it, with no message made. False: `send` takes the general path."""
        with self._lock:
            if self._waiting is not None and not self._waiting[0].taken:
                # Released, but no sender has started on it (they are waking
                # up): summed into that one. A held one beside it: the
                # general path.
                return self._held is None and self._sum_into_waiting(
                    kind, round_, arrays, clock, clock_ticks, list(self._senders.values())
                )
            if (
                self._held is None
                or time.monotonic() >= self._next_release
                or not self._held_summable(kind, round_)
            ):
                return False
            self._held[0].add(arrays, clock, clock_ticks, self._next_sequence())
            self._held_sums += 1
        return True

    def _next_sequence(self) -> int:
        with self._sequence_lock:
            self._sequence += 1
            return self._sequence

    def _sum_into_waiting(
        self,
        kind: str,
        round_: int,
        arrays: list[np.ndarray],
        clock: dict[str, int],
        clock_ticks: int,
        targets: list[NeighborSender],
    ) -> bool:
        """Adds an update into the broadcast that has gone out but that no
        sender has taken yet, if that goes to the same neighbors (`targets`)
        and sums with it; under self._lock."""
        entry = self._waiting
        if (
            entry is None
            or entry[1] != targets
            or not entry[0].coalescible_with_kind(kind, round_)
            or not entry[0].try_add(arrays, clock, clock_ticks, self._next_sequence())
        ):
            return False
        for sender in targets:
            sender.count_coalesced()
        return True

    def _take_due(
        self, now: float, force: bool = False
    ) -> list[tuple[OutboundMessage, list[NeighborSender]]]:
        """The held broadcast, if it is due (or `force`); under self._lock."""
        if self._held is None or (now < self._next_release and not force):
            return []
        held, self._held = self._held, None
        for sender in held[1]:
            sender.count_coalesced(self._held_sums)
        self._held_sums = 0
        self._waiting = held
        self._next_release = now + self.send_interval_s(len(held[1]))
        return [held]

    def release_due(self, force: bool = False) -> None:
        """Offers the held broadcast if it is due (now, with `force`)."""
        if self._held is None:  # read without the lock: a miss waits one pause
            return
        with self._lock:
            due = self._take_due(time.monotonic(), force)
        for message, targets in due:
            for sender in targets:
                sender.offer(message)

    def close(self, flush_timeout: float = 0.0) -> None:
        if flush_timeout > 0:
            self.release_due(force=True)
        with self._lock:
            senders = list(self._senders.values())
            self._senders.clear()
            self.retired_bytes_sent += sum(s.stats.bytes_sent for s in senders)
        threads = [
            threading.Thread(target=s.close, args=(flush_timeout,), daemon=True) for s in senders
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(flush_timeout + 2.0)


# --- receiving ------------------------------------------------------------


def shown(value: object, limit: int = 64) -> str:
    """`repr(value)`, cut short: a status message that echoed a huge field
    back would exceed the client's metadata limit (and flood the log)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}... ({len(text)} characters)"


class RejectedUpdate(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, last_sequence: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.last_sequence = last_sequence


class AlreadyDelivered:
    """Reads away the payload of a resent update that was delivered before."""

    def __init__(self, total_bytes: int):
        self.total_bytes = total_bytes
        self.received = 0

    @property
    def complete(self) -> bool:
        return self.received == self.total_bytes

    def add(self, data: bytes | memoryview) -> None:
        end = self.received + len(data)
        if end > self.total_bytes:
            raise codec.DecodeError(
                f"payload overflows: {end} bytes received, header announced {self.total_bytes}"
            )
        self.received = end


class MalformedChunk:
    """What `parse_chunk` returns for bytes that are not a Chunk."""

    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason


def parse_chunk(raw: bytes) -> memoryview | peer_pb2.Chunk | MalformedChunk:
    """Push's request deserializer.

    A data chunk (nearly every message) is the tag 0x12, a varint length and
    the payload: it comes back as a view of the payload, with no protobuf
    object and no copy. Everything else is parsed by protobuf, so odd but
    valid encodings mean what they mean. Garbage comes back as
    MalformedChunk for Push to reject with INVALID_ARGUMENT; a deserializer
    that raised would make gRPC answer INTERNAL.
    """
    end = len(raw)
    if end > 1 and raw[0] == DATA_TAG:
        length, shift, pos = 0, 0, 1
        while pos < min(end, 11):
            byte = raw[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                if pos + length == end:
                    return memoryview(raw)[pos:]
                break
    try:
        return peer_pb2.Chunk.FromString(raw)
    except ProtobufDecodeError as error:
        return MalformedChunk(str(error))


def add_peer_service(server: grpc.Server, servicer: PeerServicer) -> str:
    """Registers the Peer service; Push with `parse_chunk`, the rest as generated.

    Returns the service's full name.
    """
    push = grpc.stream_unary_rpc_method_handler(
        servicer.Push,
        request_deserializer=parse_chunk,
        response_serializer=peer_pb2.PushAck.SerializeToString,
    )
    # Ours first among generic handlers, and replacing the generated entry
    # among registered ones (looked up first), so Push is ours either way.
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(PEER_SERVICE, {"Push": push}),)
    )
    peer_pb2_grpc.add_PeerServicer_to_server(servicer, server)
    server.add_registered_method_handlers(PEER_SERVICE, {"Push": push})
    return PEER_SERVICE


class Node(Protocol):
    """What the servicer needs from the daemon."""

    run_id: str
    member_id: str
    specs: list[TensorSpec]
    # What a Pull of BUFFERS carries (float32; absent where nothing pulls them).
    buffer_specs: list[TensorSpec]
    accepts: frozenset[str]
    max_update_bytes: int

    def is_member(self, member_id: str) -> bool: ...
    def deliver(self, update: Incoming) -> bool: ...
    def snapshot(self, kind: str) -> tuple[list[np.ndarray], dict[str, int]]: ...
    def status(self, evaluations_since: float = 0.0) -> peer_pb2.StatusResponse: ...
    def members(self) -> list[membership_pb2.Member]: ...
    def learn_members(self, members: Sequence[membership_pb2.Member]) -> None: ...
    def request_leave(self) -> None: ...
    def count_rejection(self, code: grpc.StatusCode) -> None: ...


class PeerServicer(peer_pb2_grpc.PeerServicer):
    def __init__(self, node: Node, chunk_bytes: int = codec.DEFAULT_CHUNK_BYTES):
        self.node = node
        self._chunk_bytes = chunk_bytes
        self._last_sequence: dict[str, int] = {}
        # The last sequence delivered from each sender: a resent update at
        # or below it has arrived already (`UpdateHeader.resent`).
        self._delivered_sequence: dict[str, int] = {}
        self._sequence_lock = threading.Lock()
        self.duplicates_dropped = 0
        self.bytes_received = 0
        self._bytes_lock = threading.Lock()
        # Rejection message -> (when last logged, how many since): a sender
        # retrying the same bad update is logged once a minute, not per try.
        self._rejections_logged: dict[str, tuple[float, int]] = {}
        self._log_lock = threading.Lock()

    def _log_rejection(self, message: str) -> None:
        now = time.monotonic()
        with self._log_lock:
            logged_at, since = self._rejections_logged.get(message, (-math.inf, 0))
            if now - logged_at < REJECTION_LOG_INTERVAL_S:
                self._rejections_logged[message] = (logged_at, since + 1)
                return
            put_recent(self._rejections_logged, message, (now, 0))
        more = f" ({since} more like it in the last {now - logged_at:.0f} s)" if since else ""
        log.warning("rejected update: %s%s", message, more)

    def check_header(
        self, header: peer_pb2.UpdateHeader, restart: bool = False
    ) -> codec.Assembler | AlreadyDelivered:
        """Validates a header against the local model; returns the assembler
        (or, for a resent update delivered before, what reads its payload
        away). `restart`: the header starts over the update in progress on
        its stream, so it repeats that update's sequence number."""
        node = self.node
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        if header.run_id != node.run_id:
            raise RejectedUpdate(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"wrong run id {shown(header.run_id)}: this peer is in run {node.run_id!r}",
            )
        if not node.is_member(header.sender_id):
            raise RejectedUpdate(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"unknown sender {shown(header.sender_id)}: not a member of run {node.run_id!r} "
                "(join the bootstrap first)",
            )
        kind = (
            peer_pb2.UpdateKind.Name(header.kind)
            if header.kind in peer_pb2.UpdateKind.values()
            else str(header.kind)
        )
        if kind not in node.accepts:
            raise RejectedUpdate(
                invalid,
                f"update kind {kind} is not used by this peer's strategy "
                f"(accepts {', '.join(sorted(node.accepts)) or 'nothing'}) — "
                "do all peers run the same --strategy?",
            )
        if header.codec not in CODEC_FROM_WIRE:
            raise RejectedUpdate(invalid, f"unknown codec {header.codec}")
        if header.clock_ticks == 0 or header.clock_ticks > 1_000_000:
            raise RejectedUpdate(invalid, f"clock_ticks {header.clock_ticks} out of range")
        if not (np.isfinite(header.scale) and 0 <= abs(header.scale) < 1e30):
            raise RejectedUpdate(invalid, f"scale {header.scale} is not a usable factor")
        counter_error = out_of_range_counter(header)
        if counter_error:
            raise RejectedUpdate(invalid, counter_error)
        local = node.specs
        if len(header.tensors) != len(local):
            raise RejectedUpdate(
                invalid,
                f"update has {len(header.tensors)} tensors, local model has {len(local)} — "
                "is the sender running the same workload?",
            )
        for got, mine in zip(header.tensors, local):
            if got.name != mine.name or tuple(got.shape) != mine.shape or got.dtype != mine.dtype:
                raise RejectedUpdate(
                    invalid,
                    f"tensor mismatch for {mine.name}: got {shown(got.name)} "
                    f"{shown(tuple(got.shape))} {shown(got.dtype)}, local model has {mine.name} "
                    f"{mine.shape} {mine.dtype} — "
                    "is the sender running the same workload?",
                )
        codec_name = CODEC_FROM_WIRE[header.codec]
        if header.total_bytes > node.max_update_bytes:
            raise RejectedUpdate(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"update of {header.total_bytes} bytes exceeds the limit of "
                f"{node.max_update_bytes}",
            )
        with self._sequence_lock:
            last = self._last_sequence.get(header.sender_id, 0)
            if header.resent:
                if header.sequence <= self._delivered_sequence.get(header.sender_id, 0):
                    self.duplicates_dropped += 1
                    return AlreadyDelivered(header.total_bytes)
                last = min(last, header.sequence - 1)  # taken, as it did not arrive
            if header.sequence < last or (header.sequence == last and not restart):
                raise RejectedUpdate(
                    invalid,
                    f"sequence {header.sequence} from {header.sender_id} is not after {last}: "
                    "duplicate or replayed update",
                    last_sequence=last,
                )
            # A sender silent through MAX_MEMBERS others is forgotten (churn
            # must not grow this); its sequences start from its clock anyway.
            put_recent(
                self._last_sequence,
                header.sender_id,
                max(header.sequence, self._last_sequence.get(header.sender_id, 0)),
            )
        try:
            return codec.Assembler(local, codec_name, header.total_bytes, header.scale or 1.0)
        except codec.DecodeError as error:
            raise RejectedUpdate(invalid, str(error)) from None

    def _abort(self, context: grpc.ServicerContext, rejected: RejectedUpdate) -> None:
        self.node.count_rejection(rejected.code)
        self._log_rejection(rejected.message)
        if rejected.last_sequence is not None:
            context.set_trailing_metadata(((LAST_SEQUENCE_KEY, str(rejected.last_sequence)),))
        context.abort(rejected.code, rejected.message)

    def Push(self, request_iterator, context):  # noqa: N802 (gRPC method name)
        accepted = 0
        last_sequence = 0
        header: peer_pb2.UpdateHeader | None = None
        assembler: codec.Assembler | None = None
        try:
            for chunk in request_iterator:
                if isinstance(chunk, memoryview):  # a data chunk, from parse_chunk
                    which, data = "data", chunk
                elif isinstance(chunk, MalformedChunk):
                    raise RejectedUpdate(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"request is not a valid {peer_pb2.Chunk.DESCRIPTOR.full_name} "
                        f"message: {chunk.reason}",
                    )
                else:
                    which = chunk.WhichOneof("payload")
                    data = chunk.data if which == "data" else b""
                if which == "header":
                    restart = assembler is not None and (
                        (chunk.header.sender_id, chunk.header.sequence)
                        == (header.sender_id, header.sequence)
                    )
                    if restart:
                        # The sender starts this update over (an fp16 value
                        # overflowed at the first scale): drop what came.
                        assembler = None
                    if assembler is not None:
                        raise RejectedUpdate(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            f"new header after {assembler.received} of "
                            f"{header.total_bytes} payload bytes: truncated update",
                        )
                    header = chunk.header
                    assembler = self.check_header(header, restart)
                    data = header.inline_payload
                    if data:
                        self._add(assembler, data)
                elif which == "data":
                    if assembler is None:
                        raise RejectedUpdate(
                            grpc.StatusCode.INVALID_ARGUMENT, "data chunk before any header"
                        )
                    self._add(assembler, data)
                else:
                    raise RejectedUpdate(grpc.StatusCode.INVALID_ARGUMENT, "empty chunk")
                if assembler is not None and assembler.complete:
                    if not isinstance(assembler, AlreadyDelivered):
                        self._deliver(header, assembler)
                    accepted += 1
                    last_sequence = header.sequence
                    header, assembler = None, None
            if assembler is not None:
                raise RejectedUpdate(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"stream ended after {assembler.received} of {header.total_bytes} payload "
                    "bytes: truncated update discarded",
                )
        except RejectedUpdate as rejected:
            self._abort(context, rejected)
        return peer_pb2.PushAck(accepted=accepted, last_sequence=last_sequence)

    def _add(self, assembler: codec.Assembler, data: bytes | memoryview) -> None:
        try:
            assembler.add(data)
        except codec.DecodeError as error:
            raise RejectedUpdate(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from None
        with self._bytes_lock:  # streams are served by several threads at once
            self.bytes_received += len(data)

    def _deliver(self, header: peer_pb2.UpdateHeader, assembler: codec.Assembler) -> None:
        try:
            arrays = assembler.arrays()
        except codec.DecodeError as error:
            raise RejectedUpdate(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from None
        update = Incoming(
            kind=kind_name(header.kind),
            sender=header.sender_id,
            arrays=arrays,
            clock=dict(header.vector_clock),
            clock_ticks=header.clock_ticks,
            round=header.round,
        )
        if not self.node.deliver(update):
            raise RejectedUpdate(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "receiver's inbox stayed full: it is applying updates slower than they arrive",
            )
        with self._sequence_lock:
            put_recent(self._delivered_sequence, header.sender_id, header.sequence)

    def Pull(self, request, context):  # noqa: N802
        if request.run_id != self.node.run_id:
            self._abort(
                context,
                RejectedUpdate(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"wrong run id {shown(request.run_id)}: "
                    f"this peer is in run {self.node.run_id!r}",
                ),
            )
        kind = kind_name(request.kind) if request.kind else MODEL
        codec_name = CODEC_FROM_WIRE.get(request.codec, codec.RAW_F32)
        try:
            arrays, clock = self.node.snapshot(kind)
        except (LookupError, TimeoutError) as error:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"no {kind} to pull: {error}")
        message = OutboundMessage(
            peer_pb2.UpdateHeader(
                run_id=self.node.run_id,
                sender_id=self.node.member_id,
                tensors=specs_to_wire(
                    self.node.buffer_specs if kind == BUFFERS else self.node.specs
                ),
                codec=CODEC_TO_WIRE[codec_name],
            ),
            UpdateInfo(kind, sequence=0, clock=clock),
            arrays,
            codec_name,
        )
        message.settle_scale()  # a pull is rare: find the fp16 scale up front
        header = message.header
        yield peer_pb2.Chunk(header=header)
        scale = header.scale or 1.0
        for piece in codec.iter_frames(arrays, codec_name, scale, self._chunk_bytes):
            yield peer_pb2.Chunk(data=piece)

    def Status(self, request, context):  # noqa: N802
        return self.node.status(request.evaluations_since)

    def ListPeers(self, request, context):  # noqa: N802
        if request.run_id and request.run_id != self.node.run_id:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"wrong run id {shown(request.run_id)}: this peer is in run {self.node.run_id!r}",
            )
        if request.known:
            self.node.learn_members(request.known)
        return peer_pb2.ListPeersResponse(members=self.node.members())

    def Leave(self, request, context):  # noqa: N802
        self.node.request_leave()
        return peer_pb2.LeaveNowResponse(accepted=True)


def pull_model(
    channel: grpc.Channel,
    run_id: str,
    requester_id: str,
    specs: Sequence[TensorSpec],
    kind: str = MODEL,
    timeout: float = 30.0,
) -> tuple[list[np.ndarray], dict[str, int]]:
    """Pulls a neighbor's model (or center), validated like a pushed update."""
    stub = peer_pb2_grpc.PeerStub(channel)
    stream = stub.Pull(
        peer_pb2.PullRequest(
            run_id=run_id, requester_id=requester_id, kind=peer_pb2.UpdateKind.Value(kind)
        ),
        timeout=timeout,
    )
    header: peer_pb2.UpdateHeader | None = None
    assembler: codec.Assembler | None = None
    for chunk in stream:
        if chunk.WhichOneof("payload") == "header":
            header = chunk.header
            if [(t.name, tuple(t.shape)) for t in header.tensors] != [
                (s.name, s.shape) for s in specs
            ]:
                raise codec.DecodeError("pulled model does not match the local model's tensors")
            if header.codec not in CODEC_FROM_WIRE:
                raise codec.DecodeError(f"pulled model uses unknown codec {header.codec}")
            if out_of_range_counter(header):
                raise codec.DecodeError(f"pulled model: {out_of_range_counter(header)}")
            assembler = codec.Assembler(
                specs, CODEC_FROM_WIRE[header.codec], header.total_bytes, header.scale or 1.0
            )
            assembler.add(header.inline_payload)
        elif assembler is None:
            raise codec.DecodeError("data before header in pulled model")
        else:
            assembler.add(chunk.data)
    if assembler is None or header is None:
        raise codec.DecodeError("pull returned no model")
    return assembler.arrays(), dict(header.vector_clock)
