"""Workloads: registry, determinism, splits, learning, CIFAR I/O and augmentation, analytic functions."""

from __future__ import annotations

import math
import pickle
import re
import subprocess
import sys
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from diffgrad.lab.workloads import WORKLOADS, get_workload, list_workloads, workload_options
from diffgrad.lab.workloads.activations import ACTIVATIONS, make_activation
from diffgrad.lab.workloads.analytic import FUNCTIONS, trajectory
from diffgrad.lab.workloads.base import SPLITS, Budget, Workload
from diffgrad.lab.workloads.charlm import CONTEXT, load_corpus
from diffgrad.lab.workloads.cifar import (
    LAYOUTS,
    PAD,
    ResNet,
    crop_flip,
    random_crop_flip,
    read_cifar,
    write_fake_cifar,
)
from diffgrad.lab.workloads.common import ClassificationWorkload, fixed_split

CIFAR = ("cifar10-resnet", "cifar100-resnet")
KIND = {"cifar10-resnet": "cifar10", "cifar100-resnet": "cifar100"}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP's
    # spinning threads make them many times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cifar_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cifar")
    return {kind: write_fake_cifar(root / kind, kind, n_train=60, n_test=20) for kind in LAYOUTS}


@pytest.fixture(scope="module")
def workloads(cifar_dirs: dict[str, Path]) -> dict[str, Workload]:
    """Every registered workload; CIFAR on fake data with a tiny ResNet-18."""
    built = {}
    for name in WORKLOADS:
        options = dict(data_dir=cifar_dirs[KIND[name]], depth=18, width=4) if name in CIFAR else {}
        built[name] = get_workload(name, **options)
    return built


def batches_equal(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> bool:
    return all(torch.equal(u, v) for u, v in zip(a, b))


# --- registry and options -------------------------------------------------------------------


def test_registry_lists_every_workload_with_a_sane_contract() -> None:
    assert [name for name, _ in list_workloads()] == list(WORKLOADS)
    for name, cls in WORKLOADS.items():
        assert cls.name == name and cls.description and cls.metric_name
        assert isinstance(cls.default_budget, Budget) and cls.default_budget.steps > 0
        assert 0 < cls.default_budget.eval_every <= cls.default_budget.steps
        assert isinstance(cls.higher_is_better, bool) and math.isfinite(cls.target)
        assert "activation" in workload_options(name)


def test_unknown_workload_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"nope.*digits-cnn.*charlm"):
        get_workload("nope")


def test_unknown_option_is_named_with_its_value() -> None:
    with pytest.raises(ValueError, match=r"'colour'.*colour='red'.*activation"):
        get_workload("digits-cnn", colour="red")


@pytest.mark.parametrize("name", ["digits-cnn", "mnist1d-mlp", "charlm"])
def test_bad_activation_is_named(name: str) -> None:
    with pytest.raises(ValueError, match=r"activation.*'tanh'"):
        get_workload(name, activation="tanh")


def test_cifar_options_are_checked(cifar_dirs: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="data_dir"):
        get_workload("cifar10-resnet")
    with pytest.raises(ValueError, match=r"depth.*101"):
        get_workload("cifar10-resnet", data_dir=cifar_dirs["cifar10"], depth=101)
    with pytest.raises(ValueError, match=r"width.*0"):
        get_workload("cifar10-resnet", data_dir=cifar_dirs["cifar10"], width=0)


def test_activations() -> None:
    assert ACTIVATIONS == ("relu", "leaky_relu", "elu", "selu")
    leaky = make_activation("leaky_relu")
    assert isinstance(leaky, nn.LeakyReLU) and leaky.negative_slope == 0.1
    assert make_activation("relu") is not make_activation("relu")  # fresh modules, never shared
    with pytest.raises(ValueError, match=r"relu.*leaky_relu.*elu.*selu.*'gelu'"):
        make_activation("gelu")


def test_import_is_light() -> None:
    code = "import sys, diffgrad.lab.workloads; print(sorted({'sklearn', 'mnist1d'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- the contract, for every workload ---------------------------------------------------------


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_train_batches_are_seeded(workloads: dict[str, Workload], name: str) -> None:
    w = workloads[name]
    first = list(islice(w.train_batches(seed=1, batch_size=8), 3))
    again = list(islice(w.train_batches(seed=1, batch_size=8), 3))
    other = list(islice(w.train_batches(seed=2, batch_size=8), 3))
    assert all(batches_equal(a, b) for a, b in zip(first, again))
    assert not batches_equal(first[0], other[0])
    assert len(first[0][0]) == len(first[0][1]) == 8
    assert not batches_equal(first[0], first[1])  # the stream moves on


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_init_model_is_seeded_and_leaves_global_rng_alone(workloads: dict[str, Workload], name: str) -> None:
    w = workloads[name]
    rng = torch.get_rng_state()
    a, b, c = (w.init_model(s).state_dict() for s in (0, 0, 1))
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_adam_reduces_training_loss(workloads: dict[str, Workload], name: str) -> None:
    w = workloads[name]
    torch.manual_seed(0)
    model = w.init_model(0)
    batch = next(w.train_batches(seed=0, batch_size=16))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = w.loss(model, batch)
        assert loss.ndim == 0 and loss.requires_grad
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_evaluate_every_split(workloads: dict[str, Workload], name: str) -> None:
    w = workloads[name]
    model = w.init_model(0)
    model.train()
    for split in SPLITS:
        result = w.evaluate(model, split)
        assert math.isfinite(result.loss) and math.isfinite(result.metric)
        if w.metric_name == "accuracy":
            assert 0.0 <= result.metric <= 1.0
    assert model.training  # evaluation restores the caller's mode
    assert w.evaluate(model, "val") == w.evaluate(model, "val")
    with pytest.raises(ValueError, match="split"):
        w.evaluate(model, "validation")


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_bad_batch_size_is_rejected(workloads: dict[str, Workload], name: str) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        workloads[name].train_batches(seed=0, batch_size=0)


# --- splits -------------------------------------------------------------------------------------


def test_fixed_split_is_disjoint_and_fixed() -> None:
    parts = fixed_split(100, (70, 20, 10))
    assert [len(p) for p in parts] == [70, 20, 10]
    assert torch.equal(torch.cat(parts).sort().values, torch.arange(100))
    assert all(torch.equal(p, q) for p, q in zip(parts, fixed_split(100, (70, 20, 10))))
    with pytest.raises(ValueError, match="split sizes"):
        fixed_split(10, (8, 5))


@pytest.mark.parametrize(
    ("name", "sizes"),
    [("digits-cnn", (1197, 300, 300)), ("mnist1d-cnn", (3500, 500, 1000)), ("cifar10-resnet", (54, 6, 20))],
)
def test_classification_split_sizes(workloads: dict[str, Workload], name: str, sizes: tuple[int, ...]) -> None:
    w = workloads[name]
    assert isinstance(w, ClassificationWorkload)
    assert tuple(len(w.data(s)[1]) for s in SPLITS) == sizes
    assert all(w.data(s)[1].dtype == torch.int64 for s in SPLITS)


def test_mnist1d_models_share_data_and_generation_keeps_global_rngs(workloads: dict[str, Workload]) -> None:
    from diffgrad.lab.workloads.mnist1d import _load_mnist1d

    cnn, mlp = workloads["mnist1d-cnn"], workloads["mnist1d-mlp"]
    assert cnn.data("val")[0] is mlp.data("val")[0]
    state = np.random.get_state()[1].copy()
    fresh = _load_mnist1d.__wrapped__()  # regenerate: the generator is deterministic
    assert np.array_equal(np.random.get_state()[1], state)
    assert torch.equal(fresh["test"][0], cnn.data("test")[0])


def test_digits_splits_are_fixed_rows_normalised_with_train_statistics() -> None:
    from sklearn.datasets import load_digits

    w = get_workload("digits-cnn")
    images = torch.as_tensor(load_digits().images, dtype=torch.float32).unsqueeze(1) / 16
    indices = fixed_split(len(images), (1197, 300, 300))
    train = images[indices[0]]
    for split, rows in zip(SPLITS, indices):
        expected = (images[rows] - train.mean()) / train.std()
        assert torch.allclose(w.data(split)[0], expected, atol=1e-6)


def test_charlm_splits_are_contiguous_thirds_of_the_corpus() -> None:
    corpus = load_corpus()
    lengths = [len(corpus[s]) for s in SPLITS]
    total = sum(lengths)
    assert 200_000 < total < 1_000_000
    assert abs(lengths[0] - 0.8 * total) <= 1 and abs(lengths[1] - 0.1 * total) <= 1
    w = get_workload("charlm")
    x, y = next(w.train_batches(seed=0, batch_size=4))
    assert x.shape == y.shape == (4, CONTEXT) and torch.equal(x[:, 1:], y[:, :-1])


# --- CIFAR --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(LAYOUTS))
def test_read_cifar_reads_the_pickles_back_exactly(tmp_path: Path, kind: str) -> None:
    layout = LAYOUTS[kind]
    folder = write_fake_cifar(tmp_path / layout.subfolder, kind, n_train=23, n_test=7, seed=3)
    data = read_cifar(tmp_path, kind)  # the parent folder works too
    raw = []
    for name in layout.train_files:
        with open(folder / name, "rb") as f:
            raw.append(pickle.load(f, encoding="bytes"))
    images = np.concatenate([r[b"data"] for r in raw]).reshape(-1, 3, 32, 32)
    labels = [label for r in raw for label in r[layout.label_key]]
    assert torch.equal(data["train"][0], torch.from_numpy(images))
    assert data["train"][1].tolist() == labels
    assert data["train"][0].dtype == torch.uint8 and data["test"][0].shape == (7, 3, 32, 32)
    assert int(data["train"][1].max()) < layout.num_classes


@pytest.mark.parametrize("kind", list(LAYOUTS))
def test_missing_cifar_names_folder_and_files(tmp_path: Path, kind: str) -> None:
    layout = LAYOUTS[kind]
    with pytest.raises(FileNotFoundError) as info:
        read_cifar(tmp_path / "empty", kind)
    message = str(info.value)
    assert str(tmp_path / "empty") in message and layout.subfolder in message
    assert all(name in message for name in layout.files)
    with pytest.raises(FileNotFoundError, match=layout.test_file):
        get_workload(f"{kind}-resnet", data_dir=tmp_path)


def test_crop_flip_geometry() -> None:
    x = torch.arange(3 * 32 * 32, dtype=torch.float32).reshape(1, 3, 32, 32).repeat(2, 1, 1, 1)
    centre = torch.full((2,), PAD)
    assert torch.equal(crop_flip(x, centre, centre, torch.tensor([False, False])), x)
    assert torch.equal(crop_flip(x, centre, centre, torch.tensor([True, True])), x.flip(-1))
    corner = crop_flip(x, torch.zeros(2, dtype=torch.long), torch.full((2,), 2 * PAD), torch.tensor([False, True]))
    assert torch.all(corner[:, :, :PAD] == 0)  # zero padding above
    assert torch.equal(corner[0, :, PAD:, : 32 - PAD], x[0, :, : 32 - PAD, PAD:])
    assert torch.all(corner[0, :, :, 32 - PAD :] == 0)  # zero padding on the right ...
    assert torch.all(corner[1, :, :, :PAD] == 0)  # ... which the flip moves to the left
    assert torch.equal(corner[1], corner[0].flip(-1))
    u8 = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    assert crop_flip(u8, centre.repeat(2), centre.repeat(2), torch.zeros(4, dtype=torch.bool)).dtype == torch.uint8


def test_random_crop_flip_draws_valid_offsets_per_image() -> None:
    x = torch.rand(16, 3, 32, 32)
    out = random_crop_flip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert torch.equal(out, random_crop_flip(x, torch.Generator().manual_seed(0)))
    options = [(t, left, f) for t in range(2 * PAD + 1) for left in range(2 * PAD + 1) for f in (False, True)]
    found = set()
    for i in range(len(x)):
        image = x[i : i + 1]
        matches = [
            (t, left, f)
            for t, left, f in options
            if torch.equal(out[i], crop_flip(image, torch.tensor([t]), torch.tensor([left]), torch.tensor([f]))[0])
        ]
        assert len(matches) == 1
        found.add(matches[0])
    assert len(found) > 8 and {f for _, _, f in found} == {False, True}


def test_cifar_batches_are_normalised_and_augmented(workloads: dict[str, Workload]) -> None:
    w = workloads["cifar10-resnet"]
    x, y = next(w.train_batches(seed=0, batch_size=32))
    assert x.dtype == torch.float32 and x.shape == (32, 3, 32, 32) and y.dtype == torch.int64
    mean, std = torch.tensor(LAYOUTS["cifar10"].mean), torch.tensor(LAYOUTS["cifar10"].std)
    black = (-mean / std).view(1, 3, 1, 1)
    assert torch.isclose(x, black).any()  # zero padding shows up as black after normalisation
    assert WORKLOADS["cifar10-resnet"].default_budget == Budget(steps=35_200, batch_size=128, eval_every=352)


@pytest.mark.parametrize(("depth", "params"), [(18, 11_173_962), (34, 21_282_122), (50, 23_520_842)])
def test_resnet_matches_the_cifar_reference_sizes(depth: int, params: int) -> None:
    # Parameter counts of kuangliu/pytorch-cifar's ResNet18/34/50 for 10 classes.
    assert sum(p.numel() for p in ResNet(depth, 10).parameters()) == params


@pytest.mark.parametrize("depth", [18, 34, 50])
@pytest.mark.parametrize("activation", ["relu", "selu"])
def test_small_resnet_forward_shapes(depth: int, activation: str) -> None:
    model = ResNet(depth, num_classes=100, width=4, activation=activation)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    expansion = 4 if depth == 50 else 1
    assert model.head.in_features == 8 * 4 * expansion


# --- analytic functions ---------------------------------------------------------------------------


def value(name: str, *x: float) -> float:
    return FUNCTIONS[name].f(torch.tensor(x, dtype=torch.float64)).item()


def test_paper_functions_match_their_formulas() -> None:
    for x in (-1.0, -0.3, 0.0, 0.2, 0.7):
        expected = (x + 0.3) ** 2 if x <= 0 else (x - 0.2) ** 2 + 0.05
        assert value("F1", x) == pytest.approx(expected)
    for x in (-1.0, -0.9, -0.5, 0.0, 0.5):
        expected = -40 * x - 35.15 if x <= -0.9 else x**3 + x * math.sin(8 * x) + 0.85
        assert value("F2", x) == pytest.approx(expected)
    f3 = {-1.0: 1.0, -0.45: 0.3, -0.4: 0.35, -0.2: 0.175, 0.0: 0.0, 0.2: 0.175, 0.45: 0.3, 0.5: 0.25, 1.0: 1.0}
    for x, expected in f3.items():
        assert value("F3", x) == pytest.approx(expected)


def test_minima_and_start_points() -> None:
    assert FUNCTIONS["F1"].x0 == FUNCTIONS["F2"].x0 == FUNCTIONS["F3"].x0 == (-1.0,)
    assert value("F1", 0.2) == pytest.approx(0.05)
    for name in ("F1", "F3", "rosenbrock", "beale", "rastrigin"):
        assert value(name, *FUNCTIONS[name].minima[0]) == pytest.approx(0.0, abs=1e-12)
    assert FUNCTIONS["beale"].minima[0] == (3.0, 0.5) and FUNCTIONS["rosenbrock"].dim == 2
    grid = torch.zeros(5, 7, 2, dtype=torch.float64)
    assert FUNCTIONS["rastrigin"].f(grid).shape == (5, 7)  # whole plotting grids at once


@pytest.mark.parametrize(
    ("name", "x", "slope"),
    [
        ("F1", -1.0, -1.4),
        ("F1", 0.0, 0.6),
        ("F1", 0.5, 0.6),
        ("F2", -1.0, -40.0),
        ("F2", 0.5, 0.75 + math.sin(4.0) + 4 * math.cos(4.0)),  # the corrected F2'
        ("F3", -0.45, 1.0),
        ("F3", -0.2, -0.875),
        ("F3", 0.45, -1.0),
    ],
)
def test_autograd_derivatives(name: str, x: float, slope: float) -> None:
    point = torch.tensor([x], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(FUNCTIONS[name].f(point), point)
    assert grad.item() == pytest.approx(slope)


def test_adam_on_f1_stops_in_the_local_minimum() -> None:
    """The paper's finding (docs/paper.md §5): Adam overshoots F1's global minimum and settles at 0.2."""
    path = trajectory(FUNCTIONS["F1"], lambda p: torch.optim.Adam(p, lr=0.1, betas=(0.95, 0.999), eps=1e-8), steps=300)
    assert path.xs.shape == (301, 1) and path.losses.shape == (301,)
    assert path.xs.dtype == path.losses.dtype == torch.float64
    assert path.xs[0].item() == -1.0 and path.losses[0].item() == pytest.approx(0.49)
    assert path.xs[-1].item() == pytest.approx(0.2, abs=0.01)


def test_trajectory_accepts_a_start_and_closure_optimizers() -> None:
    path = trajectory(
        FUNCTIONS["rosenbrock"], lambda p: torch.optim.LBFGS(p, line_search_fn="strong_wolfe"), steps=20, x0=(-1.2, 1.0)
    )
    assert path.xs.shape == (21, 2) and path.losses[-1].item() < 1e-8
    with pytest.raises(ValueError, match="x0"):
        trajectory(FUNCTIONS["F1"], lambda p: torch.optim.SGD(p, lr=0.1), steps=1, x0=(0.0, 0.0))


class _Payload:
    """Unpickling this runs ``open(marker, "w")``: what a crafted data file could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return open, (str(self.marker), "w")


@pytest.mark.parametrize("kind", list(LAYOUTS))
def test_a_cifar_pickle_that_would_run_code_is_refused(tmp_path: Path, kind: str) -> None:
    layout = LAYOUTS[kind]
    folder = write_fake_cifar(tmp_path / "data", kind, n_train=4, n_test=2)
    marker = tmp_path / "ran"
    crafted = folder / layout.test_file
    crafted.write_bytes(pickle.dumps({b"data": _Payload(marker), layout.label_key: [0]}))
    # The callable pickled for open() is io.open (Python 3.11) or _io.open (3.12 and later).
    with pytest.raises(ValueError, match=re.escape(f"{crafted}: refusing to load ") + r"_?io\.open") as info:
        read_cifar(folder, kind)
    assert not marker.exists()
    with pytest.raises(ValueError, match=r"refusing to load _?io\.open"):  # at construction, not mid-run
        get_workload(f"{kind}-resnet", data_dir=folder)
    assert not marker.exists() and "only dicts, lists, bytes, numbers and numpy arrays" in str(info.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a pickle", "not a CIFAR python pickle"),
        (pickle.dumps([1, 2]), "expected a dict with keys b'data'"),
        (pickle.dumps({b"data": np.zeros((1, 3072), np.float32), b"labels": [0]}), "must be a uint8 array"),
        (pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [b"x"]}), "must be a list of integers"),
    ],
)
def test_a_foreign_cifar_file_is_named(tmp_path: Path, content: bytes, message: str) -> None:
    folder = write_fake_cifar(tmp_path, "cifar10", n_train=5, n_test=2)
    (folder / "data_batch_3").write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        read_cifar(folder)
    assert str(folder / "data_batch_3") in str(info.value)


def test_cifar_pickles_written_with_protocol_5_load(tmp_path: Path) -> None:
    # Protocol 5 (Python 3.14's default) rebuilds arrays with numpy's _frombuffer, not _reconstruct.
    folder = write_fake_cifar(tmp_path, "cifar10", n_train=5, n_test=2)
    expected = read_cifar(folder)
    for name in (*LAYOUTS["cifar10"].train_files, "test_batch"):
        with open(folder / name, "rb") as f:
            batch = pickle.load(f)
        (folder / name).write_bytes(pickle.dumps(batch, protocol=5))
    assert b"_frombuffer" in (folder / "test_batch").read_bytes()
    got = read_cifar(folder)
    assert all(torch.equal(a, b) for split in got for a, b in zip(got[split], expected[split]))
