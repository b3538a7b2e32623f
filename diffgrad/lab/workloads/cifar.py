"""``cifar10-resnet`` and ``cifar100-resnet``: the paper's image classification protocol
(docs/paper.md §6) on the python-pickle release of CIFAR read from a local folder (never downloaded).

- Data: the official pickles (``data_batch_1..5``/``test_batch`` or ``train``/``test``); a fixed
  10 % of the training images (5,000 of 50,000) is the validation split, the 10,000 test images are
  the test split. (The paper scored on the test set; selecting on it is what docs/paper.md §7 warns against.)
  The pickles are read with an unpickler that builds only dicts, lists, bytes, numbers and numpy
  arrays, so a crafted file cannot run code; a file holding anything else is refused by name.
- Augmentation (training batches only): zero-pad to 40×40, random 32×32 crop, random horizontal
  flip with p = 0.5 — the torchvision pipeline of kuangliu/pytorch-cifar done with torch ops,
  vectorised over the batch and drawn from the run's seeded generator.
- Normalisation: per-channel mean/std of each training set. (kuangliu's code divides by
  (0.2023, 0.1994, 0.2010) for CIFAR-10, a slightly different constant scale; BatchNorm makes the
  difference immaterial.)
- Models: ResNet-18/34/50 in the CIFAR form (3×3 stride-1 stem, no max-pool, 4×4 average pool).
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .activations import make_activation
from .base import Budget
from .common import ClassificationWorkload, epochs_to_steps, fixed_split, is_int

PAD = 4  # 32×32 -> 40×40
IMAGE_SIZE = 3 * 32 * 32  # values per image row in the pickles
VAL_FRACTION = 0.1
TRAIN_SIZE = 45_000  # 50,000 official training images minus the validation split
BATCH_SIZE = 128
EPOCHS = 100


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant keeps its pickles and labels."""

    subfolder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: bytes
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, self.test_file, self.meta_file)


LAYOUTS: dict[str, CifarLayout] = {
    "cifar10": CifarLayout(
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        "batches.meta",
        b"labels",
        10,
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
    ),
    "cifar100": CifarLayout(
        "cifar-100-python",
        ("train",),
        "test",
        "meta",
        b"fine_labels",
        100,
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
    ),
}


def _layout(kind: str) -> CifarLayout:
    if kind not in LAYOUTS:
        raise ValueError(f"kind must be one of {tuple(LAYOUTS)}, got {kind!r}")
    return LAYOUTS[kind]


def find_cifar_folder(data_dir: str | Path, kind: str) -> Path:
    """The folder holding ``kind``'s pickles: ``data_dir`` itself or its standard subfolder."""
    layout = _layout(kind)
    root = Path(data_dir).expanduser()
    for folder in (root, root / layout.subfolder):
        if all((folder / name).is_file() for name in layout.files):
            return folder
    raise FileNotFoundError(
        f"no {kind} data in {str(root)!r} or {str(root / layout.subfolder)!r}: expected the "
        f"python-pickle files {', '.join(layout.files)}"
    )


class UnsafePickleError(ValueError):
    """A data file asks to build something other than the plain containers and arrays of CIFAR."""


class _CifarUnpickler(pickle.Unpickler):
    """Builds only what the official CIFAR pickles hold: dicts, lists, bytes, str, ints and numpy
    arrays. Any other global (``os.system``, ``builtins.eval``, a class with a ``__reduce__``) is
    refused before it is looked up, so a crafted file in ``data_dir`` cannot run code."""

    # numpy's array reconstruction under its 1.x (numpy.core) and 2.x (numpy._core) module names;
    # _frombuffer is what pickle protocol 5 writes.
    ALLOWED = frozenset(
        {("numpy", "ndarray"), ("numpy", "dtype")}
        | {(f"numpy.{core}.multiarray", "_reconstruct") for core in ("core", "_core")}
        | {(f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")}
    )

    def __init__(self, file: BinaryIO, path: Path) -> None:
        # The official files are Python 2 pickles; encoding="bytes" keeps their keys as bytes.
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise UnsafePickleError(
                f"{self.path}: refusing to load {module}.{name}; a CIFAR data file holds "
                f"only dicts, lists, bytes, numbers and numpy arrays"
            )
        return super().find_class(module, name)


def _read_batch(path: Path, label_key: bytes) -> tuple[Tensor, Tensor]:
    """One pickle's images (uint8 [N, 3, 32, 32]) and labels (int64 [N]), checked to be what the
    official files hold."""
    with open(path, "rb") as f:
        try:
            batch = _CifarUnpickler(f, path).load()
        except UnsafePickleError:
            raise
        except Exception as error:  # a truncated or foreign file fails in many ways inside pickle
            raise ValueError(f"{path}: not a CIFAR python pickle ({type(error).__name__}: {error})") from error
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise ValueError(f"{path}: expected a dict with keys b'data' and {label_key!r}")
    data, labels = batch[b"data"], batch[label_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.size % IMAGE_SIZE:
        raise ValueError(
            f"{path}: b'data' must be a uint8 array of {IMAGE_SIZE}-value rows, got "
            f"{getattr(data, 'dtype', type(data).__name__)} of size {getattr(data, 'size', '?')}"
        )
    labels = np.asarray(labels)
    if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):  # [] reads as float
        raise ValueError(
            f"{path}: {label_key!r} must be a list of integers, got {labels.dtype} of shape {labels.shape}"
        )
    return torch.from_numpy(data.reshape(-1, 3, 32, 32)), torch.from_numpy(labels.astype(np.int64))


def read_cifar(data_dir: str | Path, kind: str = "cifar10") -> dict[str, tuple[Tensor, Tensor]]:
    """The official "train" and "test" sets as uint8 images [N, 3, 32, 32] and int64 labels."""
    layout = _layout(kind)
    folder = find_cifar_folder(data_dir, kind)
    out = {}
    for split, names in (("train", layout.train_files), ("test", (layout.test_file,))):
        images, labels = zip(*(_read_batch(folder / name, layout.label_key) for name in names))
        x, y = torch.cat(images), torch.cat(labels)
        if len(x) != len(y) or len(y) == 0 or y.min() < 0 or y.max() >= layout.num_classes:
            raise ValueError(
                f"{folder}: {split} pickles hold {len(x)} images and {len(y)} labels "
                f"(labels must lie in [0, {layout.num_classes}))"
            )
        out[split] = (x, y)
    return out


def write_fake_cifar(
    folder: str | Path, kind: str = "cifar10", n_train: int = 100, n_test: int = 20, seed: int = 0
) -> Path:
    """Write random uint8 images and labels in ``kind``'s official pickle layout into ``folder``
    (created if needed) and return it; a stand-in for tests and dry runs."""
    layout = _layout(kind)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)

    def write(name: str, content: dict) -> None:
        with open(folder / name, "wb") as f:
            pickle.dump(content, f)

    def batch(n: int) -> dict:
        return {
            b"data": torch.randint(0, 256, (n, 3 * 32 * 32), dtype=torch.uint8, generator=g).numpy(),
            layout.label_key: torch.randint(0, layout.num_classes, (n,), generator=g).tolist(),
        }

    for name, part in zip(layout.train_files, torch.arange(n_train).tensor_split(len(layout.train_files))):
        write(name, batch(len(part)))
    write(layout.test_file, batch(n_test))
    names = [f"class_{i}".encode() for i in range(layout.num_classes)]
    write(layout.meta_file, {b"label_names": names} if kind == "cifar10" else {b"fine_label_names": names})
    return folder


@functools.lru_cache(maxsize=len(LAYOUTS))
def _cifar_splits(folder: Path, kind: str) -> dict[str, tuple[Tensor, Tensor]]:
    # Cached so that the many runs of one study in one process read the pickles once, also when
    # CIFAR-10 and CIFAR-100 workloads are built side by side (the paper's tables).
    data = read_cifar(folder, kind)
    x, y = data["train"]
    val_size = round(VAL_FRACTION * len(y))
    train, val = fixed_split(len(y), (len(y) - val_size, val_size))
    return {"train": (x[train], y[train]), "val": (x[val], y[val]), "test": data["test"]}


def crop_flip(x: Tensor, top: Tensor, left: Tensor, flip: Tensor) -> Tensor:
    """Crop each image of ``x`` [B, C, H, W] at (``top[b]``, ``left[b]``) of its zero-padded
    [H+2·PAD, W+2·PAD] version, then mirror it left-right where ``flip[b]``; one gather."""
    b, c, h, w = x.shape
    padded = F.pad(x, (PAD, PAD, PAD, PAD))
    rows = top[:, None] + torch.arange(h)
    cols = torch.arange(w).expand(b, w)
    # Mirroring the crop reads its columns right to left.
    cols = torch.where(flip[:, None], cols.flip(1), cols) + left[:, None]
    return padded[
        torch.arange(b)[:, None, None, None],
        torch.arange(c)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


def random_crop_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    """The paper's augmentation: pad 4, random crop back to the input size, flip with p = 0.5."""
    b = len(x)
    top = torch.randint(0, 2 * PAD + 1, (b,), generator=generator)
    left = torch.randint(0, 2 * PAD + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    return crop_flip(x, top, left, flip)


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
    )


def _basic_branch(c_in: int, planes: int, stride: int, activation: str) -> nn.Sequential:
    return nn.Sequential(_conv_bn(c_in, planes, 3, stride), make_activation(activation), _conv_bn(planes, planes, 3))


def _bottleneck_branch(c_in: int, planes: int, stride: int, activation: str) -> nn.Sequential:
    return nn.Sequential(
        _conv_bn(c_in, planes, 1),
        make_activation(activation),
        _conv_bn(planes, planes, 3, stride),  # stride on the 3×3 conv, as in kuangliu's code
        make_activation(activation),
        _conv_bn(planes, 4 * planes, 1),
    )


# depth -> (residual branch, channel expansion, blocks per stage)
ARCHITECTURES: dict[int, tuple[Callable[[int, int, int, str], nn.Sequential], int, tuple[int, ...]]] = {
    18: (_basic_branch, 1, (2, 2, 2, 2)),
    34: (_basic_branch, 1, (3, 4, 6, 3)),
    50: (_bottleneck_branch, 4, (3, 4, 6, 3)),
}


class ResidualBlock(nn.Module):
    """activation(branch(x) + shortcut(x)); the shortcut is a 1×1 conv + BN when shapes change."""

    def __init__(self, branch: nn.Module, c_in: int, c_out: int, stride: int, activation: str) -> None:
        super().__init__()
        self.branch = branch
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else _conv_bn(c_in, c_out, 1, stride)
        self.activation = make_activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(self.branch(x) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-form ResNet: 3×3 stride-1 stem with ``width`` channels, four stages of widths
    ``width``·(1, 2, 4, 8) (strides 1, 2, 2, 2), global average pool (4×4 on 32×32 inputs), linear head."""

    def __init__(self, depth: int = 50, num_classes: int = 10, width: int = 64, activation: str = "relu") -> None:
        super().__init__()
        branch, expansion, counts = ARCHITECTURES[depth]
        layers: list[nn.Module] = [_conv_bn(3, width, 3), make_activation(activation)]
        c_in = width
        for stage, count in enumerate(counts):
            planes = width * 2**stage
            for block in range(count):
                stride = 2 if stage > 0 and block == 0 else 1
                c_out = planes * expansion
                layers.append(ResidualBlock(branch(c_in, planes, stride, activation), c_in, c_out, stride, activation))
                c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


class _CifarResNet(ClassificationWorkload):
    """A CIFAR variant (``kind``) with a ResNet; options ``data_dir`` (required), ``depth``
    (18, 34 or 50; the paper used 50), ``width`` (base channels, 64 in the paper) and ``activation``."""

    kind: ClassVar[str]
    eval_batch_size = 500
    # The paper's budget (docs/paper.md §6): 100 epochs at batch 128, evaluated once per epoch.
    default_budget = Budget(
        steps=epochs_to_steps(EPOCHS, TRAIN_SIZE, BATCH_SIZE),
        batch_size=BATCH_SIZE,
        eval_every=epochs_to_steps(1, TRAIN_SIZE, BATCH_SIZE),
    )

    def __init__(self, *, data_dir: str | Path, depth: int = 50, width: int = 64, activation: str = "relu") -> None:
        super().__init__(activation=activation)
        if not is_int(depth) or depth not in ARCHITECTURES:
            raise ValueError(f"depth must be one of {tuple(ARCHITECTURES)}, got {depth!r}")
        if not is_int(width) or width < 1:
            raise ValueError(f"width must be a positive int, got {width!r}")
        self.layout = LAYOUTS[self.kind]
        self.folder = find_cifar_folder(data_dir, self.kind)
        _cifar_splits(self.folder, self.kind)  # a missing, foreign or unsafe file fails here, not mid-run
        self.depth = int(depth)
        self.width = int(width)
        self._mean = torch.tensor(self.layout.mean).view(1, 3, 1, 1)
        self._std = torch.tensor(self.layout.std).view(1, 3, 1, 1)

    def load_splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        return _cifar_splits(self.folder, self.kind)

    def build_model(self) -> nn.Module:
        return ResNet(self.depth, self.layout.num_classes, self.width, self.activation)

    def augment(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return random_crop_flip(x, generator)

    def preprocess(self, x: Tensor) -> Tensor:
        """uint8 images -> float, normalised per channel (images stay uint8 in memory)."""
        return (x.float() / 255.0 - self._mean) / self._std


# Targets are not measured here (no CIFAR or GPU on the build machine): docs/paper.md §6, Table I's Adam at
# batch 128 scored 93.72 % / 73.72 % on test after training on all 50k images; with 45k training
# images the targets keep a margin below that.


class Cifar10ResNet(_CifarResNet):
    """CIFAR-10 (10 classes)."""

    name = "cifar10-resnet"
    description = "CIFAR-10 from data_dir (45k/5k/10k), CIFAR ResNet-18/34/50 (default 50); GPU-scale"
    kind = "cifar10"
    target = 0.92


class Cifar100ResNet(_CifarResNet):
    """CIFAR-100 (100 fine classes)."""

    name = "cifar100-resnet"
    description = "CIFAR-100 from data_dir (45k/5k/10k), CIFAR ResNet-18/34/50 (default 50); GPU-scale"
    kind = "cifar100"
    target = 0.70
