"""FSDP2 (``fully_shard``) training with DiffGrad, a distributed checkpoint, and a resume from it
that ends where the uninterrupted run ends (CPU, gloo).

    torchrun --standalone --nproc_per_node 2 examples/fsdp2_dcp.py --steps 20

Each rank holds a shard of every parameter and of DiffGrad's state (m, v, previous gradient).
``get_state_dict`` / ``set_state_dict`` turn both into dicts keyed by parameter name, and
``torch.distributed.checkpoint`` writes every rank's shards in parallel; such a checkpoint also
loads on a different number of ranks (see docs/scaling.md).
"""

from __future__ import annotations

import argparse
import tempfile

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard

from diffgrad import DiffGrad


def make(mesh: DeviceMesh) -> tuple[nn.Module, DiffGrad]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 65), nn.GELU(), nn.Linear(65, 1))
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)  # one all-gather / reduce-scatter unit per layer
    fully_shard(model, mesh=mesh)
    # The parameters are DTensors now (65 rows: 33 on rank 0, 32 on rank 1); DiffGrad's state
    # is created sharded the same way.
    return model, DiffGrad(model.parameters(), lr=3e-3, weight_decay=1e-4)


def train(model: nn.Module, optimizer: DiffGrad, steps: range, rank: int, world_size: int) -> float:
    for step in steps:
        g = torch.Generator().manual_seed(step)  # the batch depends on the step: resumable
        x = torch.randn(64, 16, generator=g).chunk(world_size)[rank]
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(model(x), x[:, :4].sum(dim=1, keepdim=True))
        loss.backward()  # reduce-scatter: each rank gets the averaged gradient of its shard
        optimizer.step()  # updates the local shards only
    return loss.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world_size,))  # "cuda" on GPUs, with the nccl backend
    half = args.steps // 2

    # Every rank must write to the same folder: rank 0 picks it and tells the others.
    folder = [tempfile.mkdtemp(prefix="diffgrad-dcp-") if rank == 0 else None]
    dist.broadcast_object_list(folder, src=0)
    checkpoint = f"{folder[0]}/step-{half}"

    model, optimizer = make(mesh)
    train(model, optimizer, range(half), rank, world_size)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=checkpoint)
    loss = train(model, optimizer, range(half, args.steps), rank, world_size)

    # A fresh model and optimizer: the dicts from get_state_dict tell DCP which shards to read.
    resumed, resumed_optimizer = make(mesh)
    model_state, optimizer_state = get_state_dict(resumed, resumed_optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=checkpoint)
    set_state_dict(resumed, resumed_optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    assert int(resumed_optimizer.state[resumed[0].weight]["step"]) == half
    train(resumed, resumed_optimizer, range(half, args.steps), rank, world_size)

    for a, b in zip(model.parameters(), resumed.parameters()):
        torch.testing.assert_close(a.to_local(), b.to_local(), rtol=0, atol=0)
    shard = tuple(optimizer.state[model[0].weight]["exp_avg"].to_local().shape)
    print(f"rank {rank}: weight shard {tuple(model[0].weight.to_local().shape)}, exp_avg shard {shard}")
    dist.barrier()
    if rank == 0:
        print(f"step {args.steps}: loss {loss:.4f} on rank 0")
        print(f"OK fsdp2_dcp: resumed from the step-{half} checkpoint and matched the uninterrupted run exactly")
    # The sharded models go before their process group, which their hooks and state refer to.
    del model, optimizer, resumed, resumed_optimizer
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
