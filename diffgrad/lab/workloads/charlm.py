"""``charlm``: a small causal Transformer byte-level language model on Python's own standard
library source, which exists on every machine that runs this package (no download).

The corpus is :data:`CORPUS_FILES` read in that order from ``sysconfig.get_paths()["stdlib"]``,
skipping any that are missing. Its exact bytes, and so the exact losses, depend on the Python
version; runs are comparable on one interpreter version.
"""

from __future__ import annotations

import functools
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .activations import check_activation, make_activation
from .base import SPLITS, Batch, Budget, Evaluation, Workload, check_split, seeded_generator
from .common import check_batch_size, evaluating, model_device, seeded_init

CORPUS_FILES = (
    "argparse.py",
    "contextlib.py",
    "dataclasses.py",
    "difflib.py",
    "fractions.py",
    "functools.py",
    "heapq.py",
    "pprint.py",
    "random.py",
    "statistics.py",
    "string.py",
    "textwrap.py",
)  # ~495 KB on CPython 3.11
VOCAB = 256  # bytes
CONTEXT = 64
EVAL_WINDOWS = 256  # evenly spaced windows per split: a fixed, quick evaluation set


@functools.lru_cache(maxsize=1)
def load_corpus() -> dict[str, Tensor]:
    """The corpus as uint8 byte tensors, split contiguously 80/10/10 into train/val/test."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    paths = [stdlib / name for name in CORPUS_FILES if (stdlib / name).is_file()]
    if not paths:
        raise FileNotFoundError(f"none of {CORPUS_FILES} found in the standard library folder {stdlib}")
    data = torch.frombuffer(bytearray(b"".join(p.read_bytes() for p in paths)), dtype=torch.uint8)
    n = len(data)
    bounds = (0, int(0.8 * n), int(0.9 * n), n)
    return {split: data[a:b] for split, a, b in zip(SPLITS, bounds[:-1], bounds[1:])}


def windows(text: Tensor, starts: Tensor) -> Batch:
    """Inputs ``text[s : s+CONTEXT]`` and next-byte targets ``text[s+1 : s+CONTEXT+1]`` (int64)."""
    rows = text[starts.unsqueeze(1) + torch.arange(CONTEXT + 1)].long()
    return rows[:, :-1], rows[:, 1:]


class CausalTransformer(nn.Module):
    """Token + learned position embeddings, pre-norm Transformer blocks with a causal mask, a
    final LayerNorm and a linear head over the byte vocabulary."""

    def __init__(self, activation: str, d_model: int = 64, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d_model)
        self.position = nn.Parameter(torch.randn(CONTEXT, d_model) * 0.02)
        # Separate layer objects (not nn.TransformerEncoder's deep copies) so that each layer
        # gets its own random initialisation.
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model,
                heads,
                dim_feedforward=4 * d_model,
                dropout=0.0,
                activation=make_activation(activation),
                batch_first=True,
                norm_first=True,
            )
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, VOCAB)

    def forward(self, tokens: Tensor) -> Tensor:
        length = tokens.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device)
        h = self.embed(tokens) + self.position[:length]
        for block in self.blocks:
            h = block(h, src_mask=mask, is_causal=True)
        return self.head(self.norm(h))


class CharLM(Workload):
    """Byte-level causal LM (2 layers, d_model 64, 4 heads, context 64); metric: val loss."""

    name = "charlm"
    description = "byte-level 2-layer Transformer LM on Python stdlib source; val loss in nats/byte"
    metric_name = "loss"
    higher_is_better = False
    # Measured on CPython 3.11's corpus, one CPU core: ~40 ms a step, ~29 s for the budget with its
    # evaluations; Adam at lr 3e-3 or 1e-2 passes 2.2 nats by step 400-600 and is at 2.06-2.13 by
    # step 700 (4 runs), at lr 1e-3 only at ~2.31.
    target = 2.2
    default_budget = Budget(steps=700, batch_size=32, eval_every=100)

    def __init__(self, *, activation: str = "relu") -> None:
        self.activation = check_activation(activation)

    def text(self, split: str) -> Tensor:
        """The bytes of ``split`` (a shared uint8 tensor; do not modify it)."""
        check_split(split)
        return load_corpus()[split]

    def init_model(self, seed: int) -> nn.Module:
        return seeded_init(seed, lambda: CausalTransformer(self.activation))

    def train_batches(self, seed: int, batch_size: int) -> Iterator[Batch]:
        """Endless batches of windows at uniformly random positions of the training text."""
        text = self.text("train")
        check_batch_size(batch_size, len(text) - CONTEXT)
        return self._windows(text, batch_size, seeded_generator(seed))

    @staticmethod
    def _windows(text: Tensor, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        while True:
            yield windows(text, torch.randint(len(text) - CONTEXT, (batch_size,), generator=generator))

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        device = model_device(model)
        x, y = batch
        return F.cross_entropy(model(x.to(device)).flatten(0, 1), y.to(device).flatten())

    def evaluate(self, model: nn.Module, split: str) -> Evaluation:
        """Mean next-byte loss over :data:`EVAL_WINDOWS` evenly spaced windows of ``split``."""
        text = self.text(split)
        starts = torch.linspace(0, len(text) - CONTEXT - 1, EVAL_WINDOWS).long()
        with evaluating(model):
            loss = self.loss(model, windows(text, starts)).item()
        return Evaluation(loss=loss, metric=loss)
