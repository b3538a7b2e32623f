"""Data-parallel diffGrad over ``torch.distributed``: the 1-bit compressed all-reduce, 1-bit diffGrad
(and 1-bit Adam), and Byzantine-robust aggregation as a DDP communication hook."""

from diffgrad.distributed.compression import WireCounter, compressed_all_reduce, error_buffers, wire_bytes
from diffgrad.distributed.onebit import NO_FRICTION, XI_SOURCES, OneBitDiffGrad, onebit_comm_hook
from diffgrad.distributed.robust import AGGREGATORS, ATTACKS, RobustState, aggregate, robust_comm_hook

__all__ = [
    "AGGREGATORS",
    "ATTACKS",
    "NO_FRICTION",
    "XI_SOURCES",
    "OneBitDiffGrad",
    "RobustState",
    "WireCounter",
    "aggregate",
    "compressed_all_reduce",
    "error_buffers",
    "onebit_comm_hook",
    "robust_comm_hook",
    "wire_bytes",
]
