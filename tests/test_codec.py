"""Codec: exact round trips for raw float32, bounded error for fp16/bf16,
and an assembler that refuses anything the header did not promise."""

import numpy as np
import pytest

from peer import codec
from peer.codec import TensorSpec

SPECS = [TensorSpec("w", (3, 4)), TensorSpec("b", (4,)), TensorSpec("s", ())]


def arrays(seed: int = 0, scale: float = 1.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(s.shape) * scale).astype(np.float32) for s in SPECS]


def roundtrip(values, name, chunk_bytes=7):
    scale = codec.f16_scale(values) if name == codec.F16 else 1.0
    payload = codec.encode(values, name, scale)
    assembler = codec.Assembler(SPECS, name, len(payload))
    for piece in codec.chunks(payload, chunk_bytes):
        assembler.add(bytes(piece))
    return assembler.arrays(scale)


def test_raw_roundtrip_is_byte_exact_across_odd_chunk_sizes():
    values = arrays()
    for chunk_bytes in (1, 7, 64, 1 << 20):
        out = roundtrip(values, codec.RAW_F32, chunk_bytes)
        for a, b in zip(values, out):
            assert a.shape == b.shape and a.dtype == b.dtype == np.float32
            assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("name, rel", [(codec.F16, 2**-11), (codec.BF16, 2**-8)])
def test_half_precision_roundtrip_error_is_bounded(name, rel):
    values = arrays(1)
    out = roundtrip(values, name)
    for a, b in zip(values, out):
        np.testing.assert_allclose(b, a, rtol=rel, atol=1e-7)
    assert len(codec.encode(values, name)) == len(codec.encode(values, codec.RAW_F32)) // 2


def test_fp16_scale_keeps_large_values_finite():
    values = arrays(2, scale=1e6)
    out = roundtrip(values, codec.F16)
    for a, b in zip(values, out):
        assert np.isfinite(b).all()
        np.testing.assert_allclose(b, a, rtol=2**-10, atol=1e6 * 2**-24 * 70000)


def test_chunks_are_views_not_copies():
    payload = codec.encode(arrays(), codec.RAW_F32)
    first = next(codec.chunks(payload, 8))
    assert isinstance(first, memoryview) and first.obj is payload.obj


def test_assembler_rejects_wrong_total_overflow_truncation_and_nan():
    values = arrays()
    payload = bytes(codec.encode(values, codec.RAW_F32))
    with pytest.raises(codec.DecodeError, match="announces"):
        codec.Assembler(SPECS, codec.RAW_F32, len(payload) + 4)
    assembler = codec.Assembler(SPECS, codec.RAW_F32, len(payload))
    with pytest.raises(codec.DecodeError, match="overflows"):
        assembler.add(payload + b"x")
    assembler.add(payload[:10])
    with pytest.raises(codec.DecodeError, match="truncated"):
        assembler.arrays()
    poisoned = [v.copy() for v in values]
    poisoned[1][2] = np.nan
    assembler = codec.Assembler(SPECS, codec.RAW_F32, len(payload))
    assembler.add(bytes(codec.encode(poisoned, codec.RAW_F32)))
    with pytest.raises(codec.DecodeError, match="tensor b contains NaN"):
        assembler.arrays()
