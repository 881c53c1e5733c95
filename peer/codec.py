"""Tensors <-> bytes for the wire.

An update is a list of float32 numpy arrays, sent as raw float32, float16, or
bfloat16 (the top 16 bits of float32, rounded to nearest even).

Sending: `frame_chunks` cuts the encoded payload into the `bytes` objects
that gRPC sends, each behind a prefix the caller chooses (the transport's
protobuf framing). Python gRPC takes a message only as one `bytes`, so one
copy per chunk is unavoidable; it is the only one: float32 goes straight
from the tensors' memory into the message, with no packed intermediate, and
fp16/bf16 are converted one chunk at a time straight into a new message
(converting 100 MB in one go runs at a fraction of that speed, most of it
page faults on the fresh output).

Receiving: `Assembler` copies each chunk into a buffer sized from the local
model's specs — every size is checked against them before a byte is
accepted, so a hostile sender cannot make us allocate or write beyond what
the model needs — and converts, scales and checks the chunk for NaN/Inf
right after it arrived, while it is still in cache. Buffers come from a
`BufferPool`, because touching fresh memory costs a page fault per 4 KiB:
about as long as receiving the bytes in the first place.
"""

from __future__ import annotations

import ctypes
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

RAW_F32 = "raw"
F16 = "fp16"
BF16 = "bf16"
CODECS = (RAW_F32, F16, BF16)
BYTES_PER_VALUE = {RAW_F32: 4, F16: 2, BF16: 2}
DEFAULT_CHUNK_BYTES = 1 << 20
# Received chunks are read-only bytes that torch converts from and never
# writes to. torch warns once per process that a tensor over a read-only
# buffer could be written to; have that once here, silenced.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    torch.frombuffer(b"\0\0", dtype=torch.float16)
# torch converts float32 <-> float16/bfloat16 (round to nearest even) about
# six times faster than numpy's float16 cast, which is not vectorized. Chunks
# are small: with more than one torch thread on a busy machine the thread
# hand-offs cost more than the conversion (the daemon runs torch on one).
_HALF_DTYPES = {F16: torch.float16, BF16: torch.bfloat16}


class DecodeError(ValueError):
    """The payload does not match what the header and local model promise."""


class F16Overflow(ValueError):
    """A value does not fit float16 at the scale the frames were made with
    (or is NaN): the update needs `f16_scale`."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def payload_bytes(specs: Sequence[TensorSpec], codec: str) -> int:
    return sum(s.numel for s in specs) * BYTES_PER_VALUE[codec]


F16_MAX = 65504.0


def f16_scale(arrays: Sequence[np.ndarray]) -> float:
    """Scale that keeps float16 values finite: 1 unless some |value| > F16_MAX.

    One min-max pass rather than abs().max(): no temporary the size of the
    update. NaN propagates, so a NaN update gets a NaN scale, which
    receivers refuse.
    """
    peaks = [torch.aminmax(torch.from_numpy(np.asarray(a))) for a in arrays if a.size]
    peak = float(torch.stack([torch.maximum(hi, -lo) for lo, hi in peaks]).max()) if peaks else 0.0
    return 1.0 if peak <= F16_MAX else peak / F16_MAX


# A value is NaN or +-Inf when all its exponent bits are set. Read as signed
# integers those are the largest positive values; read as unsigned, the
# largest of all (the sign bit set): two integer maxima, which numpy runs on
# SIMD at about twice the speed of a floating-point min/max of the halves.
_HALF_NONFINITE_FROM = {F16: 0x7C00, BF16: 0x7F80}


def _halves_finite(bits: np.ndarray, codec: str) -> bool:
    """Whether every float16/bfloat16 value, given as its int16 bits, is finite."""
    if not bits.size:
        return True
    limit = _HALF_NONFINITE_FROM[codec]
    return int(bits.max()) < limit and int(bits.view(np.uint16).max()) < (limit | 0x8000)


def _check_codec(codec: str) -> None:
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")


def _flat_float32(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """1-D float32 views of the arrays (a copy only if one is not contiguous float32)."""
    return [np.ascontiguousarray(a, dtype=np.float32).reshape(-1) for a in arrays]


def encode(arrays: Sequence[np.ndarray], codec: str = RAW_F32, scale: float = 1.0) -> memoryview:
    """Packs float32 arrays (divided by `scale`) into one buffer in `codec`.

    The receiver multiplies by the header's scale; use `f16_scale` for fp16.
    For sending, `frame_chunks` makes the same bytes without this buffer.
    """
    _check_codec(codec)
    flats = _flat_float32(arrays)
    total = sum(f.size for f in flats)
    out = np.empty(total, dtype=np.float32 if codec == RAW_F32 else np.int16)
    half = torch.from_numpy(out).view(_HALF_DTYPES[codec]) if codec != RAW_F32 else None
    offset = 0
    for flat in flats:
        n = flat.size
        values = flat / np.float32(scale) if scale != 1.0 else flat
        if half is None:
            out[offset : offset + n] = values
        else:
            half[offset : offset + n].copy_(torch.from_numpy(values))
        offset += n
    return memoryview(out).cast("B")


def chunks(buffer: memoryview, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[memoryview]:
    """Zero-copy slices of at most `chunk_bytes`."""
    for start in range(0, len(buffer), chunk_bytes):
        yield buffer[start : start + chunk_bytes]


def _windows(flats: Sequence[np.ndarray], per_chunk: int) -> Iterator[list[np.ndarray]]:
    """The concatenation of `flats` in windows of `per_chunk` values, each
    window as the views (one per tensor it spans) that make it up."""
    pieces: list[np.ndarray] = []
    count = 0
    for flat in flats:
        start = 0
        while start < flat.size:
            take = min(per_chunk - count, flat.size - start)
            pieces.append(flat[start : start + take])
            count += take
            start += take
            if count == per_chunk:
                yield pieces
                pieces, count = [], 0
    if pieces:
        yield pieces


_bytes_new = ctypes.pythonapi.PyBytes_FromStringAndSize
_bytes_new.restype = ctypes.py_object
_bytes_new.argtypes = (ctypes.c_char_p, ctypes.c_ssize_t)
_bytes_data = ctypes.pythonapi.PyBytes_AsString
_bytes_data.restype = ctypes.c_void_p
_bytes_data.argtypes = (ctypes.py_object,)


def _new_message(head: bytes, length: int) -> tuple[bytes, np.ndarray]:
    """A new `bytes` of `head` followed by `length` bytes to fill, and a
    writable uint8 view of the part to fill.

    gRPC takes a message only as `bytes`; building it in place is what the
    C API offers for this (`PyBytes_FromStringAndSize(NULL, n)` makes one
    with uninitialized contents, which may be written until it is shared),
    so a converted chunk is written once instead of being converted into a
    buffer and copied. The view must be dropped before the message is shared.
    """
    size = len(head) + length
    if length <= 0:
        return head, np.empty(0, np.uint8)
    message = _bytes_new(None, size)
    memory = np.frombuffer((ctypes.c_uint8 * size).from_address(_bytes_data(message)), np.uint8)
    memory[: len(head)] = np.frombuffer(head, np.uint8)
    return message, memory[len(head) :]


def _no_prefix(_size: int) -> bytes:
    return b""


def iter_frames(
    arrays: Sequence[np.ndarray],
    codec: str = RAW_F32,
    scale: float = 1.0,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    prefix: Callable[[int], bytes] = _no_prefix,
    check_f16: bool = False,
) -> Iterator[bytes]:
    """The payload `encode` would make, as one `bytes` per chunk of about
    `chunk_bytes` (a whole number of values), each starting with
    `prefix(len(chunk))`: the exact messages to hand to gRPC, made one at a
    time so a single recipient needs no second copy of the update.

    With `check_f16`, each float16 chunk is checked right after conversion
    (integer maxima of its bits while in cache, ~1.5 ms per 100 MB of
    float32, against ~7 ms for `f16_scale`'s pass over the whole update) and
    F16Overflow is raised before a chunk with Inf or NaN is yielded."""
    _check_codec(codec)
    check_f16 = check_f16 and codec == F16
    width = BYTES_PER_VALUE[codec]
    per_chunk = max(1, chunk_bytes // width)
    flats = _flat_float32(arrays)
    scaled = scale != 1.0
    half = codec != RAW_F32
    if not (scaled or half):
        for pieces in _windows(flats, per_chunk):
            yield b"".join([prefix(sum(p.size for p in pieces) * width), *pieces])
        return
    divisor = np.float32(scale)
    staging = np.empty(min(per_chunk, sum(f.size for f in flats)), np.float32) if scaled else None
    for pieces in _windows(flats, per_chunk):
        count = sum(p.size for p in pieces)
        message, payload = _new_message(prefix(count * width), count * width)
        out = torch.from_numpy(payload).view(_HALF_DTYPES[codec]) if half else None
        offset = 0
        for piece in pieces:
            end = offset + piece.size
            if scaled:
                values = np.divide(piece, divisor, out=staging[offset:end])
                if not half:
                    payload[offset * width : end * width] = values.view(np.uint8)
            else:
                values = piece
            if half:
                out[offset:end].copy_(torch.from_numpy(values))
            offset = end
        finite = not check_f16 or _halves_finite(payload.view(np.int16), F16)
        del out, payload  # no writable view of the message outlives its making
        if not finite:
            raise F16Overflow(f"a value beyond float16's range at scale {scale:g}")
        yield message


def frame_chunks(
    arrays: Sequence[np.ndarray],
    codec: str = RAW_F32,
    scale: float = 1.0,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    prefix: Callable[[int], bytes] = _no_prefix,
) -> list[bytes]:
    """All of `iter_frames` at once, to send the same update to several peers."""
    return list(iter_frames(arrays, codec, scale, chunk_bytes, prefix))


class BufferPool:
    """Receive buffers that are reused once nothing references them.

    A fresh 100 MB buffer costs ~25,000 page faults on first touch, about as
    long as gRPC takes to deliver the bytes. A lent buffer comes back when
    the last array viewing it (the decoded update, wherever the strategy
    keeps it) is garbage; at most `max_idle_per_size` idle buffers of each
    size are kept, so the pool adds a bounded amount to the peak.
    """

    def __init__(self, max_idle_per_size: int = 2):
        self.max_idle_per_size = max_idle_per_size
        self._idle: dict[int, list[np.ndarray]] = {}
        # Re-entrant: a garbage collection inside `take` may return a buffer.
        self._lock = threading.RLock()
        self.allocated = 0
        self.reused = 0

    def take(self, nbytes: int) -> np.ndarray:
        """A uint8 array of `nbytes` with arbitrary contents."""
        with self._lock:
            idle = self._idle.get(nbytes)
            storage = idle.pop() if idle else None
            if storage is None:
                self.allocated += 1
            else:
                self.reused += 1
        if storage is None:
            storage = np.empty(nbytes, np.uint8)
        # Views of `lent` keep it alive (their base is `lent`, whose base is
        # a memoryview, not `storage`), so its death means none is left.
        lent = np.frombuffer(memoryview(storage), np.uint8)
        weakref.finalize(lent, self._give_back, storage).atexit = False
        return lent

    def _give_back(self, storage: np.ndarray) -> None:
        with self._lock:
            idle = self._idle.setdefault(storage.size, [])
            if len(idle) < self.max_idle_per_size:
                idle.append(storage)

    def clear(self) -> None:
        with self._lock:
            self._idle.clear()


RECEIVE_POOL = BufferPool()


class Assembler:
    """Receives the chunks of one update into a preallocated float32 buffer.

    Raw float32 is copied in as it comes; fp16/bf16 chunks are converted
    straight from the received bytes, with no staging copy. Values are
    multiplied by `scale` and checked for NaN/Inf as their chunk arrives,
    while it is in cache; a bad value is reported by `arrays()`, after the
    payload is complete, so a truncated stream still reads as truncated.
    """

    def __init__(
        self,
        specs: Sequence[TensorSpec],
        codec: str,
        total_bytes: int,
        scale: float = 1.0,
        pool: BufferPool = RECEIVE_POOL,
    ):
        if codec not in CODECS:
            raise DecodeError(f"unknown codec {codec!r}")
        expected = payload_bytes(specs, codec)
        if total_bytes != expected:
            raise DecodeError(
                f"header announces {total_bytes} bytes but {len(specs)} tensors in {codec} "
                f"take {expected}"
            )
        self.specs = list(specs)
        self.codec = codec
        self.scale = scale
        self.total_bytes = total_bytes
        self._scaled = scale not in (0.0, 1.0)
        self._width = BYTES_PER_VALUE[codec]
        self._values = pool.take(total_bytes // self._width * 4).view(np.float32)
        self._bytes = memoryview(self._values).cast("B")  # raw float32 lands here
        self._half = _HALF_DTYPES.get(codec)
        self._partial = b""  # the first byte of a value split between chunks
        self.received = 0
        self._converted = 0  # values converted and checked so far
        self._bad_tensor: str | None = None

    @property
    def complete(self) -> bool:
        return self.received == self.total_bytes

    def add(self, data: bytes | memoryview) -> None:
        start = self.received
        end = start + len(data)
        if end > self.total_bytes:
            raise DecodeError(
                f"payload overflows: {end} bytes received, header announced {self.total_bytes}"
            )
        self.received = end
        if self._half is None:
            self._bytes[start:end] = data
            self._check(end // 4)
            return
        if not data:
            return  # an empty chunk must not complete a split value with nothing
        if self._partial:
            self._convert_halves(self._partial + bytes(data[:1]))
            self._partial = b""
            data = memoryview(data)[1:]
        whole = len(data) & ~1
        if whole:
            self._convert_halves(data[:whole])
        self._partial = bytes(data[whole:])

    def _convert_halves(self, data: bytes | memoryview) -> None:
        start = self._converted
        upto = start + len(data) // 2
        halves = torch.frombuffer(data, dtype=self._half)
        torch.from_numpy(self._values[start:upto]).copy_(halves)
        if self._scaled:
            self._check(upto)  # finite halves times the scale may overflow
            return
        # A finite half is a finite float32: checking the halves' bits reads
        # half the bytes and makes no temporary.
        if self._bad_tensor is None and not _halves_finite(
            np.frombuffer(data, np.int16), self.codec
        ):
            first = start + int(torch.argmin(torch.isfinite(halves).to(torch.uint8)))
            self._bad_tensor = self._tensor_at(first)
        self._converted = upto

    def _check(self, upto: int) -> None:
        """Scales and checks the values converted since the last call."""
        start = self._converted
        if upto <= start:
            return
        values = self._values[start:upto]
        if self._scaled:
            # Scale before the finiteness check: finite values times a
            # finite scale can still overflow to Inf.
            with np.errstate(over="ignore", invalid="ignore"):
                values *= np.float32(self.scale)
        if self._bad_tensor is None and not np.isfinite(values).all():
            first = start + int(np.argmin(np.isfinite(values)))
            self._bad_tensor = self._tensor_at(first)
        self._converted = upto

    def _tensor_at(self, index: int) -> str:
        for spec in self.specs:
            if index < spec.numel:
                return spec.name
            index -= spec.numel
        raise IndexError(index)

    def arrays(self, scale: float | None = None) -> list[np.ndarray]:
        """Float32 arrays shaped as the specs, views of the pooled buffer;
        raises if the payload is incomplete or any value is not finite."""
        if scale is not None and (scale or 1.0) != (self.scale or 1.0):
            raise ValueError(
                f"scale {scale} differs from the assembler's {self.scale}: values are "
                "scaled as they arrive, so give the scale when creating the Assembler"
            )
        if not self.complete:
            raise DecodeError(f"truncated payload: {self.received} of {self.total_bytes} bytes")
        if self._bad_tensor is not None:
            after = f" after scaling by {self.scale:g}" if self._scaled else ""
            raise DecodeError(f"tensor {self._bad_tensor} contains NaN or Inf values{after}")
        out = []
        offset = 0
        for spec in self.specs:
            out.append(self._values[offset : offset + spec.numel].reshape(spec.shape))
            offset += spec.numel
        return out


def round_trip(arrays: Sequence[np.ndarray], codec: str) -> list[np.ndarray]:
    """The arrays as a receiver decodes them from `codec` (with the scale a
    sender would pick): a sender adding an update to its own replica adds
    this, so its replica and its receivers' take the same values."""
    _check_codec(codec)
    if codec == RAW_F32:
        return list(arrays)
    scale = f16_scale(arrays) if codec == F16 else 1.0
    scale = float(np.float32(scale))  # as the header carries it
    specs = [TensorSpec(str(i), tuple(a.shape)) for i, a in enumerate(arrays)]
    return decode(encode(arrays, codec, scale), specs, codec, scale)


def decode(
    buffer: bytes | bytearray | memoryview,
    specs: Sequence[TensorSpec],
    codec: str,
    scale: float = 1.0,
) -> list[np.ndarray]:
    """A whole payload at once: what an `Assembler` makes of it in one chunk."""
    if codec not in CODECS:
        raise DecodeError(f"unknown codec {codec!r}")
    if len(buffer) != payload_bytes(specs, codec):
        raise DecodeError(
            f"payload has {len(buffer)} bytes, {payload_bytes(specs, codec)} expected"
        )
    assembler = Assembler(specs, codec, len(buffer), scale)
    assembler.add(buffer)
    return assembler.arrays()
