"""DiffGrad in the Hugging Face ``Trainer``, with the usual no-decay parameter groups, and a resume
from a checkpoint that ends where the uninterrupted run ends.

    python examples/hf_trainer.py --steps 8

The model is a tiny BERT built from a config (no download) and the data are synthetic.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainingArguments,
    get_cosine_schedule_with_warmup,
)
from transformers.utils import logging as hf_logging

from diffgrad import DiffGrad


class SyntheticTokens(Dataset):
    """Random token sequences; the label is whether the first token is even."""

    def __init__(self, size: int, length: int, vocab: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (size, length), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = self.ids[i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids[0] % 2}


def make_model() -> nn.Module:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=2,
    )
    return BertForSequenceClassification(config)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay for weight matrices and embeddings; none for biases and LayerNorm weights."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            (no_decay if name == "bias" or isinstance(module, nn.LayerNorm) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_trainer(output_dir: Path, steps: int, dataset: Dataset) -> Trainer:
    model = make_model()
    # Trainer builds such groups itself only when it creates the optimizer; given an optimizer
    # through `optimizers=`, it uses it as is, so the no-decay groups are built here.
    optimizer = DiffGrad(param_groups(model, weight_decay=0.01), lr=3e-3, decoupled_weight_decay=True)
    scheduler = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=2, num_training_steps=steps)
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=8,
        save_strategy="steps",
        save_steps=steps // 2,
        logging_steps=steps // 2,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    return Trainer(model=model, args=args, train_dataset=dataset, optimizers=(optimizer, scheduler))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    steps = max(2, args.steps - args.steps % 2)  # even, so the halfway checkpoint exists
    hf_logging.set_verbosity_error()
    dataset = SyntheticTokens(size=256, length=16, vocab=64)

    with tempfile.TemporaryDirectory() as tmp:
        full = make_trainer(Path(tmp) / "full", steps, dataset)
        result = full.train()
        print(f"{steps} steps: training loss {result.training_loss:.4f}")

        # A fresh model and optimizer, resumed from the halfway checkpoint: Trainer loads the
        # weights, DiffGrad's state (m, v, previous gradient, step), the scheduler and the RNGs.
        resumed = make_trainer(Path(tmp) / "resumed", steps, dataset)
        checkpoint = Path(tmp) / "full" / f"checkpoint-{steps // 2}"
        resumed.train(resume_from_checkpoint=str(checkpoint))

    # Trainer hands the optimizer to accelerate, which wraps it; the DiffGrad passed in is inside.
    optimizers = [getattr(t.optimizer, "optimizer", t.optimizer) for t in (full, resumed)]
    assert all(isinstance(o, DiffGrad) for o in optimizers)
    for (name, a), b in zip(full.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, msg=f"{name} differs after resuming")
        for key in ("step", "exp_avg", "exp_avg_sq", "previous_grad"):
            torch.testing.assert_close(optimizers[0].state[a][key], optimizers[1].state[b][key])
    print(f"OK hf_trainer: resumed from step {steps // 2} and matched the uninterrupted run")


if __name__ == "__main__":
    main()
