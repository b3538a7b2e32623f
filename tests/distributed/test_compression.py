"""The 1-bit compressed all-reduce (diffgrad.distributed.compression): sign packing, the two-phase
scheme against a plain-Python reference with both error buffers, and the bytes it sends."""

from __future__ import annotations

import pytest
import torch

from diffgrad.distributed.compression import ChunkLayout, pack_signs, unpack_signs, wire_bytes
from wire_cases import compressed_task, pool4, reference_compressed

STEPS = 4
SIZES = (13, 5, 40)  # padding in every chunk layout; one tensor smaller than a chunk


def test_sign_bits_round_trip_eight_per_byte() -> None:
    u = torch.tensor([[0.5, -1.0, 0.0, -0.0, 3.0, -2.0, 1e-30, -1e-30, *([-1.0] * 8)]])
    packed = pack_signs(u)
    assert packed.dtype == torch.uint8 and packed.shape == (1, 2)
    assert packed.tolist() == [[0b01011101, 0]]  # bit k of byte j: u[8j + k] >= 0 (and -0.0 >= 0)
    assert unpack_signs(packed).tolist() == [[1, -1, 1, 1, 1, -1, 1, -1, *([-1] * 8)]]


def test_layout_pads_each_tensor_to_whole_bytes_per_rank() -> None:
    layout = ChunkLayout([13, 5], world_size=3)
    assert layout.widths == [8, 8] and layout.sign_bytes == 2 and layout.row_bytes == 2 + 2 * 4
    assert layout.real.tolist() == [[8, 5], [5, 0], [0, 0]]


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("sizes", [[10], [13, 5, 40]], ids=["sign_bytes_2", "sign_bytes_multiple_of_4"])
def test_decode_reads_back_what_encode_sent(world_size, sizes) -> None:
    """The receivers' C(u) equals the sender's, whatever byte offset the scales start at."""
    layout = ChunkLayout(sizes, world_size)
    u = torch.randn(world_size, sum(layout.widths), generator=torch.Generator().manual_seed(0))
    rows = list(range(world_size))
    payload, compressed = layout.encode(u, rows)
    assert torch.equal(layout.decode(payload, rows, u.dtype), compressed)


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_two_phase_all_reduce_matches_plain_python_reference(world_size) -> None:
    g = torch.Generator().manual_seed(world_size)
    inputs = [
        [[torch.randn(size, generator=g, dtype=torch.float64) for size in SIZES] for _ in range(STEPS)]
        for _ in range(world_size)
    ]
    got = pool4().run(compressed_task, inputs, world_size=world_size)
    as_floats = [[[t.tolist() for t in step] for step in rank] for rank in inputs]
    expected = reference_compressed(as_floats, world_size)["per_rank"]
    for rank in range(world_size):
        for step in range(STEPS):
            for key in ("results", "worker", "server"):
                for k, (ours, ref) in enumerate(zip(got[rank][key][step], expected[rank][key][step])):
                    ours = ours[: len(ref)] if key != "server" else ours
                    torch.testing.assert_close(
                        ours, torch.tensor(ref, dtype=torch.float64), rtol=1e-12, atol=1e-12,
                        msg=lambda m, r=rank, s=step, n=key, i=k: f"rank {r} step {s} {n}[{i}]: {m}",
                    )  # fmt: skip
            # the padding of the worker errors stays 0
            for ours, size in zip(got[rank]["worker"][step], SIZES):
                assert not ours[size:].any()
        # every rank decodes the same bytes: identical results
        for step in range(STEPS):
            for a, b in zip(got[rank]["results"][step], got[0]["results"][step]):
                assert torch.equal(a, b)


def test_error_feedback_makes_the_running_sum_exact_up_to_the_carried_errors() -> None:
    """Σ_t result_t = Σ_t mean_i x_i − mean_i δ_i − ε (summed over chunks): nothing is lost, only
    delayed. Holds for any compressor; fails if an error buffer is dropped or misplaced."""
    world_size = 3
    g = torch.Generator().manual_seed(7)
    inputs = [[[torch.randn(29, generator=g, dtype=torch.float64)] for _ in range(6)] for _ in range(world_size)]
    got = pool4().run(compressed_task, inputs, world_size=world_size)
    sent = sum(torch.stack([inputs[i][t][0] for i in range(world_size)]).mean(0) for t in range(6))
    received = sum(got[0]["results"][t][0] for t in range(6))
    worker = torch.stack([got[i]["worker"][-1][0] for i in range(world_size)]).mean(0)[:29]
    server = torch.cat([got[r]["server"][-1][0] for r in range(world_size)])[:29]
    torch.testing.assert_close(received, sent - worker - server, rtol=1e-12, atol=1e-12)


def test_bytes_on_the_wire_per_collective() -> None:
    assert wire_bytes("all_reduce", 4000, 4) == 6000
    assert wire_bytes("all_to_all", 4000, 4) == 3000
    assert wire_bytes("all_gather", 1000, 4) == 3000
    with pytest.raises(ValueError, match="unknown collective 'broadcast'"):
        wire_bytes("broadcast", 1, 2)
