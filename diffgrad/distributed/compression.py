"""The 1-bit compressed all-reduce with error feedback (1-bit Adam, Tang et al., ICML 2021, Alg. 1),
and the byte count of every collective it makes.

Each rank holds tensors x_i (rank i) to be averaged, a worker error δ_i (one per tensor, the padded
size of the tensor) and a server error ε_i (one per tensor, 1/n of that). With n ranks and every
tensor cut into n chunks (chunk r belongs to rank r, the "server" of that chunk)::

    u_i   = x_i + δ_i                          worker-side error feedback
    c_i   = C(u_i),   δ_i ← u_i − c_i          compress every chunk: signs + one scale
    all_to_all: rank r receives chunk r of c_1 … c_n
    s_r   = (1/n)·Σ_i c_i[r] + ε_r             server-side error feedback
    ĉ_r   = C(s_r),   ε_r ← s_r − ĉ_r          re-compress the averaged chunk
    all_gather: every rank receives ĉ_1 … ĉ_n, the average of the x_i up to the errors carried over

C(u) = a·sign(u) with a = mean(|u|) over the chunk's elements: for a fixed sign pattern this is the
scale that minimises ‖u − a·sign(u)‖₂ (DeepSpeed's ‖u‖₂/√d is never smaller and leaves a larger
error). sign(0) is +1. A chunk is one tensor's slice for one rank, so a bias and a weight matrix
never share a scale. Signs travel 8 per byte and each scale as 4 bytes of float32, appended to the
bits of its row, so each phase is one collective of bytes.

Every tensor is padded to a multiple of 8·n elements so that each chunk is a whole number of
bytes; the padding stays 0 in every buffer (it is masked out of C), so any world size works.
All ranks decode the same gathered bytes in the same order: the result is bit-identical on every
rank.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "ChunkLayout",
    "WireCounter",
    "check_all_to_all",
    "compressed_all_reduce",
    "error_buffers",
    "pack_signs",
    "unpack_signs",
    "wire_bytes",
]

# Eight 0/1 bytes read as one little-endian int64 x = Σ_k b_k·2^(8k), times this constant, hold
# Σ_k b_k·2^k in their top byte (each b_k lands on bit 56 + k; the other products fall below bit
# 56 on distinct bits, without carries, or above bit 63).
_GATHER_BITS = 0x0102040810204080
# Row j: the ±1 of the 8 bits of byte value j, bit k first.
_SIGNS = ((torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1).float().mul_(2).sub_(1)
_SCALE_BYTES = 4  # float32


# -- bytes on the wire ------------------------------------------------------------------------


def wire_bytes(op: str, nbytes: int, world_size: int) -> int:
    """Bytes one rank sends in collective ``op`` whose input on that rank is ``nbytes`` long, for
    the bandwidth-optimal algorithms (what NCCL's and gloo's ring algorithms send):

    * ``all_reduce``: 2·(n−1)/n·nbytes (a reduce-scatter, then an all-gather);
    * ``all_to_all``: (n−1)/n·nbytes (every row but its own goes out);
    * ``all_gather``: (n−1)·nbytes (its block passes on to n−1 ranks).
    """
    n = world_size
    if op == "all_reduce":
        return 2 * (n - 1) * nbytes // n
    if op == "all_to_all":
        return (n - 1) * nbytes // n
    if op == "all_gather":
        return (n - 1) * nbytes
    raise ValueError(f"unknown collective {op!r}; expected all_reduce, all_to_all or all_gather")


@dataclass
class WireCounter:
    """Bytes this rank sent, per collective (see :func:`wire_bytes`), counted where each collective
    is issued."""

    sent: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def record(self, op: str, tensor: Tensor, world_size: int) -> None:
        self.sent[op] += wire_bytes(op, tensor.numel() * tensor.element_size(), world_size)

    @property
    def total(self) -> int:
        return sum(self.sent.values())


def check_all_to_all(group: dist.ProcessGroup | None = None) -> None:
    """Raise ``ValueError`` unless the backend of ``group`` runs ``all_to_all_single`` (gloo on
    CPU and NCCL on GPU do); costs one collective of one byte per rank."""
    world_size = dist.get_world_size(group)
    probe = torch.zeros(world_size, dtype=torch.uint8)
    if dist.get_backend(group) == "nccl":
        probe = probe.cuda()
    try:
        dist.all_to_all_single(torch.empty_like(probe), probe, group=group)
    except (RuntimeError, NotImplementedError) as error:
        raise ValueError(
            f"the 1-bit all-reduce needs all_to_all, which backend {dist.get_backend(group)!r} does not "
            f"run ({error}); use gloo (CPU) or nccl (GPU)"
        ) from error


# -- sign bits --------------------------------------------------------------------------------


def pack_signs(u: Tensor) -> Tensor:
    """Bit k of byte j is 1 where u[..., 8j + k] ≥ 0; the last dim must be a multiple of 8."""
    words = (u >= 0).to(torch.uint8).unflatten(-1, (-1, 8)).contiguous().view(torch.int64).squeeze(-1)
    return words.mul_(_GATHER_BITS).bitwise_right_shift_(56).bitwise_and_(0xFF).to(torch.uint8)


def unpack_signs(packed: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """±1 from the bits of :func:`pack_signs` (8 values per byte)."""
    return _SIGNS.to(packed.device, dtype)[packed.long()].flatten(-2)


# -- layout -----------------------------------------------------------------------------------


class ChunkLayout:
    """Where each tensor's chunks sit in the rows of the compressed collectives.

    Tensor k of ``numels[k]`` elements is padded to n·w_k elements, w_k a multiple of 8, and its
    chunk for rank r is elements [r·w_k, (r+1)·w_k). A collective row r is the concatenation of
    the chunks for rank r of every tensor: ``columns`` = Σ_k w_k elements, ``columns/8`` bytes of
    signs and then one float32 scale per tensor.
    """

    def __init__(self, numels: Sequence[int], world_size: int) -> None:
        self.numels = list(numels)
        self.world_size = world_size
        self.widths = [8 * math.ceil(numel / (8 * world_size)) for numel in self.numels]
        self.columns = sum(self.widths)
        self.sign_bytes = self.columns // 8
        self.row_bytes = self.sign_bytes + _SCALE_BYTES * len(self.numels)
        # How many real (not padding) elements each (row, tensor) chunk has, and the padding columns of each row.
        self.real = torch.tensor(
            [[min(max(numel - r * w, 0), w) for numel, w in zip(self.numels, self.widths)] for r in range(world_size)],
            dtype=torch.float32,
        )
        mask = torch.cat(
            [(torch.arange(world_size * w) < numel).view(world_size, w) for numel, w in zip(self.numels, self.widths)],
            dim=1,
        )
        self.padding = [row.logical_not().nonzero().squeeze(1) for row in mask]

    def to_rows(self, tensors: Sequence[Tensor]) -> Tensor:
        """The tensors (flattened, zero-padded) as an n × columns matrix of the compute dtype."""
        n = self.world_size
        return torch.cat(
            [
                torch.nn.functional.pad(t.reshape(-1), (0, n * w - t.numel())).view(n, w)
                for t, w in zip(tensors, self.widths)
            ],
            dim=1,
        )

    def from_rows(self, rows: Tensor, tensors: Sequence[Tensor]) -> None:
        """Copy an n × columns matrix back into ``tensors`` (padding dropped)."""
        for t, chunk in zip(tensors, rows.split(self.widths, dim=1)):
            t.copy_(chunk.reshape(-1)[: t.numel()].view_as(t))

    def scales(self, u: Tensor, rows: Sequence[int]) -> Tensor:
        """mean(|u|) of every (row, tensor) chunk of ``u`` (shape rows × columns) → rows × tensors;
        ``rows`` are the layout rows ``u`` holds (its padding is 0, so the sums run over all columns)."""
        sums = torch.stack([chunk.sum(dim=1) for chunk in u.abs().split(self.widths, dim=1)], dim=1)
        return sums.div_(self.real[list(rows)].to(u.device, u.dtype).clamp_min(1))

    def _zero_padding(self, x: Tensor, rows: Sequence[int]) -> Tensor:
        for i, row in enumerate(rows):
            x[i, self.padding[row].to(x.device)] = 0
        return x

    def encode(self, u: Tensor, rows: Sequence[int]) -> tuple[Tensor, Tensor]:
        """(bytes to send: signs then scales, per row; C(u)) for a rows × columns ``u``. C(u) uses
        the scales as sent (float32), so the error fed back is exactly what the receivers miss."""
        scales = self.scales(u, rows).to(torch.float32)
        payload = torch.cat([pack_signs(u), scales.view(torch.uint8)], dim=1)
        compressed = torch.empty_like(u)
        for out, chunk, scale in zip(compressed.split(self.widths, 1), u.split(self.widths, 1), scales.to(u.dtype).T):
            scale = scale.unsqueeze(1)
            torch.where(chunk >= 0, scale, scale.neg(), out=out)
        return payload, self._zero_padding(compressed, rows)

    def decode(self, payload: Tensor, rows: Sequence[int], dtype: torch.dtype) -> Tensor:
        """C(u) from the bytes of :meth:`encode`."""
        packed, scale_bytes = payload.split([self.sign_bytes, payload.shape[1] - self.sign_bytes], dim=1)
        # A fresh copy: with one rank the slice already counts as contiguous, but starts at a byte
        # offset that float32 cannot be viewed from.
        scales = scale_bytes.clone(memory_format=torch.contiguous_format).view(torch.float32).to(dtype)
        signs = unpack_signs(packed, dtype)
        for chunk, scale in zip(signs.split(self.widths, 1), scales.T):
            chunk.mul_(scale.unsqueeze(1))
        return self._zero_padding(signs, rows)


def error_buffers(tensors: Sequence[Tensor], world_size: int) -> tuple[list[Tensor], list[Tensor]]:
    """Zero worker errors (n·w_k elements each) and server errors (w_k each) for ``tensors``."""
    layout = ChunkLayout([t.numel() for t in tensors], world_size)
    worker = [t.new_zeros(world_size * w) for t, w in zip(tensors, layout.widths)]
    server = [t.new_zeros(w) for t, w in zip(tensors, layout.widths)]
    return worker, server


# -- the collective ---------------------------------------------------------------------------


def compressed_all_reduce(
    tensors: Sequence[Tensor],
    worker_errors: Sequence[Tensor],
    server_errors: Sequence[Tensor],
    group: dist.ProcessGroup | None = None,
    counter: WireCounter | None = None,
    layout: ChunkLayout | None = None,
) -> None:
    """Replace ``tensors`` in place by their 1-bit compressed average over the ranks of ``group``
    (module docstring), updating this rank's ``worker_errors`` and ``server_errors`` in place
    (from :func:`error_buffers`). Every rank must pass tensors of the same sizes in the same order;
    ``layout`` (a :class:`ChunkLayout` of those sizes) may be kept by a caller that reduces the same
    tensors every step."""
    world_size, rank = dist.get_world_size(group), dist.get_rank(group)
    if layout is None:
        layout = ChunkLayout([t.numel() for t in tensors], world_size)
    dtype = tensors[0].dtype

    # Worker: u = x + δ, c = C(u), δ ← u − c; row r of the payload goes to rank r.
    u = layout.to_rows(tensors).add_(layout.to_rows(worker_errors))
    every_row = range(world_size)
    payload, compressed = layout.encode(u, every_row)
    layout.from_rows(u.sub_(compressed), worker_errors)
    received = torch.empty_like(payload)
    if counter is not None:
        counter.record("all_to_all", payload, world_size)
    dist.all_to_all_single(received, payload, group=group)

    # Server of chunk `rank`: s = mean over ranks + ε, ĉ = C(s), ε ← s − ĉ.
    s = layout.decode(received, [rank] * world_size, dtype).sum(0, keepdim=True).div_(world_size)
    s.add_(torch.cat(list(server_errors)).unsqueeze(0))
    server_payload, server_compressed = layout.encode(s, [rank])
    for error, chunk in zip(server_errors, (s - server_compressed)[0].split(layout.widths)):
        error.copy_(chunk)

    gathered = torch.empty(world_size, layout.row_bytes, dtype=torch.uint8, device=payload.device)
    if counter is not None:
        counter.record("all_gather", server_payload, world_size)
    dist.all_gather(list(gathered.unbind(0)), server_payload[0], group=group)
    layout.from_rows(layout.decode(gathered, every_row, dtype), tensors)
