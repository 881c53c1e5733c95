"""Tensors <-> bytes for the wire.

An update is a list of float32 numpy arrays. Encoding packs them, in order,
into one contiguous buffer (raw float32, float16, or bfloat16 = the top 16
bits of float32) that is then cut into chunks as memoryview slices: no copy
per chunk. Decoding receives chunks into a buffer preallocated from the
header's total size and views it with `np.frombuffer`; every size is checked
against the local model's specs before a byte is accepted, so a hostile
sender cannot make us allocate or write beyond what the model needs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

RAW_F32 = "raw"
F16 = "fp16"
BF16 = "bf16"
CODECS = (RAW_F32, F16, BF16)
BYTES_PER_VALUE = {RAW_F32: 4, F16: 2, BF16: 2}
DEFAULT_CHUNK_BYTES = 1 << 20


class DecodeError(ValueError):
    """The payload does not match what the header and local model promise."""


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
    """Scale that keeps float16 values finite: 1 unless some |value| > F16_MAX."""
    peak = max((float(np.abs(a).max()) for a in arrays if a.size), default=0.0)
    return 1.0 if peak <= F16_MAX else peak / F16_MAX


def encode(arrays: Sequence[np.ndarray], codec: str = RAW_F32, scale: float = 1.0) -> memoryview:
    """Packs float32 arrays (divided by `scale`) into one buffer in `codec`.

    The receiver multiplies by the header's scale; use `f16_scale` for fp16.
    """
    total = sum(a.size for a in arrays)
    if codec == RAW_F32:
        out = np.empty(total, dtype=np.float32)
    elif codec == F16:
        out = np.empty(total, dtype=np.float16)
    elif codec == BF16:
        out = np.empty(total, dtype=np.uint16)
    else:
        raise ValueError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")
    offset = 0
    for a in arrays:
        flat = np.asarray(a, dtype=np.float32).reshape(-1)
        if scale != 1.0:
            flat = flat / np.float32(scale)
        n = flat.size
        if codec == BF16:
            # Round to nearest even on the 16 dropped bits, then keep the top half.
            bits = flat.view(np.uint32)
            rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
            out[offset : offset + n] = ((bits + rounding) >> 16).astype(np.uint16)
        else:
            out[offset : offset + n] = flat
        offset += n
    return memoryview(out).cast("B")


def chunks(buffer: memoryview, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[memoryview]:
    """Zero-copy slices of at most `chunk_bytes`."""
    for start in range(0, len(buffer), chunk_bytes):
        yield buffer[start : start + chunk_bytes]


class Assembler:
    """Receives the chunks of one update into a preallocated buffer."""

    def __init__(self, specs: Sequence[TensorSpec], codec: str, total_bytes: int):
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
        self._buffer = bytearray(total_bytes)
        self._view = memoryview(self._buffer)
        self.received = 0

    @property
    def complete(self) -> bool:
        return self.received == len(self._buffer)

    def add(self, data: bytes) -> None:
        end = self.received + len(data)
        if end > len(self._buffer):
            raise DecodeError(
                f"payload overflows: {end} bytes received, header announced {len(self._buffer)}"
            )
        self._view[self.received : end] = data
        self.received = end

    def arrays(self, scale: float = 1.0) -> list[np.ndarray]:
        """Float32 arrays shaped as the specs; raises if any value is not finite."""
        if not self.complete:
            raise DecodeError(f"truncated payload: {self.received} of {len(self._buffer)} bytes")
        return decode(self._buffer, self.specs, self.codec, scale)


def decode(
    buffer: bytes | bytearray | memoryview,
    specs: Sequence[TensorSpec],
    codec: str,
    scale: float = 1.0,
) -> list[np.ndarray]:
    if codec not in CODECS:
        raise DecodeError(f"unknown codec {codec!r}")
    if len(buffer) != payload_bytes(specs, codec):
        raise DecodeError(
            f"payload has {len(buffer)} bytes, {payload_bytes(specs, codec)} expected"
        )
    if codec == RAW_F32:
        flat = np.frombuffer(buffer, dtype=np.float32)
    elif codec == F16:
        flat = np.frombuffer(buffer, dtype=np.float16).astype(np.float32)
    else:
        flat = (np.frombuffer(buffer, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
    scaled = scale not in (0.0, 1.0)
    if scaled:
        # Scale before the finiteness check: finite values times a finite
        # scale can still overflow to Inf.
        with np.errstate(over="ignore", invalid="ignore"):
            flat = flat * np.float32(scale)
    if not np.isfinite(flat).all():
        bad = next(
            s.name
            for s, part in zip(specs, np.split(flat, np.cumsum([s.numel for s in specs])[:-1]))
            if not np.isfinite(part).all()
        )
        after = f" after scaling by {scale:g}" if scaled else ""
        raise DecodeError(f"tensor {bad} contains NaN or Inf values{after}")
    out = []
    offset = 0
    for spec in specs:
        out.append(flat[offset : offset + spec.numel].reshape(spec.shape))
        offset += spec.numel
    return out
