"""Codec: exact round trips for raw float32, bounded error for fp16/bf16,
wire frames identical to the packed encoding, an assembler that refuses
anything the header did not promise, and receive buffers that are reused."""

import gc

import numpy as np
import pytest
import torch

from peer import codec
from peer.codec import TensorSpec

SPECS = [TensorSpec("w", (3, 4)), TensorSpec("b", (4,)), TensorSpec("s", ())]


def arrays(seed: int = 0, scale: float = 1.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(s.shape) * scale).astype(np.float32) for s in SPECS]


def roundtrip(values, name, chunk_bytes=7):
    scale = codec.f16_scale(values) if name == codec.F16 else 1.0
    payload = codec.encode(values, name, scale)
    assembler = codec.Assembler(SPECS, name, len(payload), scale)
    for piece in codec.chunks(payload, chunk_bytes):
        assembler.add(bytes(piece))
    return assembler.arrays()


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


@pytest.mark.parametrize("name", codec.CODECS)
@pytest.mark.parametrize("scale", [1.0, 3.0])
@pytest.mark.parametrize("chunk_bytes", [1, 6, 16, 1 << 20])
def test_frames_carry_exactly_the_packed_encoding(name, scale, chunk_bytes):
    values = arrays(3)
    frames = codec.frame_chunks(values, name, scale, chunk_bytes, prefix=lambda n: b"%d:" % n)
    width = codec.BYTES_PER_VALUE[name]
    bodies = []
    for frame in frames:
        size, _, body = frame.partition(b":")
        assert int(size) == len(body) and len(body) % width == 0
        assert len(body) <= max(chunk_bytes, width)
        bodies.append(body)
    assert b"".join(bodies) == bytes(codec.encode(values, name, scale))


def test_frames_of_raw_float32_are_the_tensors_bytes():
    values = arrays(4)
    assert b"".join(codec.frame_chunks(values, codec.RAW_F32, chunk_bytes=20)) == b"".join(
        v.tobytes() for v in values
    )


def test_bf16_rounds_to_nearest_even():
    # 1 + 2^-8 is halfway between two bf16 neighbours: ties go to the even one (1.0);
    # 1 + 3 * 2^-8 rounds up to 1 + 2^-6.
    values = [np.array([1 + 2**-8, 1 + 3 * 2**-8, -2.5], dtype=np.float32)]
    specs = [TensorSpec("x", (3,))]
    decoded = codec.decode(codec.encode(values, codec.BF16), specs, codec.BF16)
    assert decoded[0].tolist() == [1.0, 1 + 2**-6, -2.5]


def test_receive_buffers_are_reused_once_the_arrays_are_gone():
    pool = codec.BufferPool()
    payload = bytes(codec.encode(arrays(), codec.RAW_F32))
    first = codec.Assembler(SPECS, codec.RAW_F32, len(payload), pool=pool)
    first.add(payload)
    kept = first.arrays()[0]
    del first
    gc.collect()
    second = codec.Assembler(SPECS, codec.RAW_F32, len(payload), pool=pool)
    assert pool.reused == 0, "a buffer still viewed by a delivered array was lent again"
    second.add(payload)
    assert kept.tobytes() == arrays()[0].tobytes()
    del second, kept
    gc.collect()
    codec.Assembler(SPECS, codec.RAW_F32, len(payload), pool=pool)
    assert pool.reused == 1 and pool.allocated == 2


@pytest.mark.parametrize("name", [codec.F16, codec.BF16])
def test_a_value_split_across_chunks_is_decoded_once_whole(name):
    values = arrays(5)
    payload = bytes(codec.encode(values, name))
    assembler = codec.Assembler(SPECS, name, len(payload))
    assembler.add(payload[:3])  # one value and a half
    assembler.add(payload[3:])
    expected = codec.decode(payload, SPECS, name)
    for got, want in zip(assembler.arrays(), expected):
        assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("name", [codec.F16, codec.BF16])
def test_empty_chunk_after_a_split_half_value_is_harmless(name):
    # Found by fuzzing: 3 bytes (one value and a half), then an empty chunk.
    payload = bytes(codec.encode(arrays(3), name))
    assembler = codec.Assembler(SPECS, name, len(payload))
    assembler.add(payload[:3])
    assembler.add(b"")
    assembler.add(payload[3:])
    expected = roundtrip(arrays(3), name)
    for a, b in zip(assembler.arrays(), expected):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("name", codec.CODECS)
@pytest.mark.parametrize("scale", [1.0, 3.0])
@pytest.mark.parametrize("chunk_bytes", [1, 6, 1 << 20])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_value_is_reported_with_its_tensor_in_every_codec(
    name, scale, chunk_bytes, bad
):
    poisoned = arrays()
    poisoned[1][2] = bad
    payload = bytes(codec.encode(poisoned, name))
    assembler = codec.Assembler(SPECS, name, len(payload), scale)
    for chunk in codec.chunks(memoryview(payload), chunk_bytes):
        assembler.add(chunk)
    with pytest.raises(codec.DecodeError, match="tensor b contains NaN or Inf"):
        assembler.arrays()


@pytest.mark.parametrize("name", [codec.F16, codec.BF16])
def test_the_largest_finite_half_passes_the_check(name):
    top = 65504.0 if name == codec.F16 else float(torch.finfo(torch.bfloat16).max)
    values = [np.array([top, -top], dtype=np.float32)]
    specs = [TensorSpec("x", (2,))]
    assert codec.decode(codec.encode(values, name), specs, name)[0].tolist() == [top, -top]


@pytest.mark.parametrize("name", [codec.F16, codec.BF16])
def test_the_halves_check_agrees_with_isfinite_on_every_bit_pattern(name):
    patterns = np.arange(-(1 << 15), 1 << 15, dtype=np.int32).astype(np.int16)
    finite = torch.isfinite(torch.from_numpy(patterns).view(codec._HALF_DTYPES[name])).numpy()
    verdicts = np.array([codec._halves_finite(patterns[i : i + 1], name) for i in range(65536)])
    assert (verdicts == finite).all()
    assert codec._halves_finite(patterns[finite], name)
    assert not codec._halves_finite(patterns, name)


# Bits of NaN/Inf with either sign, around the finite values next to them.
NON_FINITE_BITS = {
    codec.F16: (0x7C00, 0x7C01, 0x7FFF, 0xFC00, 0xFC01, 0xFFFF),
    codec.BF16: (0x7F80, 0x7F81, 0x7FFF, 0xFF80, 0xFF81, 0xFFFF),
}
LARGEST_FINITE_BITS = {codec.F16: (0x7BFF, 0xFBFF, 0x8000), codec.BF16: (0x7F7F, 0xFF7F, 0x8000)}


@pytest.mark.parametrize("name", [codec.F16, codec.BF16])
def test_the_receiver_refuses_every_non_finite_half_and_takes_the_largest_finite(name):
    specs = [TensorSpec("x", (3,))]
    for bits in NON_FINITE_BITS[name]:
        payload = np.array([0x3C00, bits, 0], np.uint16).tobytes()
        with pytest.raises(codec.DecodeError, match="tensor x contains NaN or Inf"):
            codec.decode(payload, specs, name)
    payload = np.array(LARGEST_FINITE_BITS[name], np.uint16).tobytes()
    expected = torch.from_numpy(np.frombuffer(payload, np.int16).copy())
    expected = expected.view(codec._HALF_DTYPES[name]).float().numpy()
    assert codec.decode(payload, specs, name)[0].tolist() == expected.tolist()


@pytest.mark.parametrize("prefix", [b"", b"abc"])  # an odd prefix leaves the halves unaligned
def test_the_sender_check_catches_overflow_of_either_sign_in_any_chunk(prefix):
    for bad in (70000.0, -70000.0, np.nan, -np.inf):
        values = [np.zeros(10, np.float32), np.ones(7, np.float32)]
        values[1][5] = bad
        with pytest.raises(codec.F16Overflow):
            list(
                codec.iter_frames(
                    values, codec.F16, chunk_bytes=6, prefix=lambda n: prefix, check_f16=True
                )
            )
    frames = codec.frame_chunks([np.full(9, -65504.0, np.float32)], codec.F16, chunk_bytes=6)
    assert b"".join(frames) == bytes(codec.encode([np.full(9, -65504.0, np.float32)], codec.F16))
