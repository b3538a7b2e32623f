"""DistributedDataParallel training with DiffGrad (CPU, gloo; use nccl and cuda:LOCAL_RANK on GPUs).

    torchrun --standalone --nproc_per_node 2 examples/ddp.py --steps 20

Every rank takes its own part of each batch; DDP averages the gradients in backward, so the ranks
take identical DiffGrad steps and their parameters stay equal, which the run checks at the end.
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from diffgrad import DiffGrad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    dist.init_process_group("gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT
    rank, world_size = dist.get_rank(), dist.get_world_size()

    torch.manual_seed(0)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    # gradient_as_bucket_view=True lets .grad alias DDP's buckets: safe with DiffGrad, which keeps
    # its own copy of the previous gradient rather than a reference to .grad.
    model = DDP(nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 1)), gradient_as_bucket_view=True)
    optimizer = DiffGrad(model.parameters(), lr=3e-3)

    g = torch.Generator().manual_seed(1)  # the same global batch on every rank
    for _ in range(args.steps):
        x = torch.randn(64, 16, generator=g)
        inputs = x.chunk(world_size)[rank]
        targets = inputs[:, :4].sum(dim=1, keepdim=True)
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        optimizer.step()

    # The parameters of all ranks must still be equal: compare with rank 0's.
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    assert torch.equal(flat, reference), f"rank {rank} diverged from rank 0"
    if rank == 0:
        print(f"step {args.steps}: loss {loss.item():.4f} on rank 0")
        print(f"OK ddp: {world_size} ranks took {args.steps} identical DiffGrad steps")
    dist.barrier()  # no rank tears the process group down while another still uses it
    # The DDP model goes before its process group: a DDP reducer destroyed after the group can hang.
    del model, optimizer
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
