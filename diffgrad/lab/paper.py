"""What the paper states and reports, as data: the settings of its experiments and its published
numbers (docs/paper.md §5–§7), for ``diffgrad reproduce`` to rerun and print beside its own."""

from __future__ import annotations

# The 1-D functions (Sec. V, Eq. 24–26): both optimizers at these settings, θ_0 = −1.
ONE_D_HPARAMS = {"lr": 0.1, "betas": (0.95, 0.999), "eps": 1e-8}
ONE_D_STEPS = 300
ONE_D_FUNCTIONS = ("F1", "F2", "F3")

# Regret (Sec. IV): the step α/sqrt(t) of the analysis, with Reddi et al.'s β1 = 0.9, β2 = 0.99.
REGRET_HPARAMS = {"lr": 0.1, "betas": (0.9, 0.99)}

# Tables I–III (Sec. VI).
BATCH_SIZES = (32, 64, 128)
ACTIVATIONS = ("relu", "leaky_relu", "elu", "selu")
DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}

# docs/paper.md §6, Table I: top-1 accuracy (%) at batch sizes 32 / 64 / 128.
TABLE1 = {
    "cifar10": {
        "sgdm": (92.95, 92.07, 90.15),
        "adagrad": (92.04, 92.01, 91.30),
        "adadelta": (93.66, 93.48, 93.54),
        "rmsprop": (92.82, 92.32, 92.26),
        "amsgrad": (93.73, 93.40, 93.51),
        "adam": (93.78, 93.81, 93.72),
        "diffgrad": (93.90, 94.05, 94.08),
    },
    "cifar100": {
        "sgdm": (73.30, 70.37, 67.25),
        "adagrad": (71.01, 70.80, 68.38),
        "adadelta": (73.46, 74.09, 74.12),
        "rmsprop": (65.31, 66.80, 62.65),
        "amsgrad": (73.06, 72.45, 72.86),
        "adam": (71.82, 73.31, 73.72),
        "diffgrad": (75.40, 75.27, 75.05),
    },
}
# Table II's best cells: (dataset, batch size) -> (variant, accuracy).
TABLE2_BEST = {
    ("cifar10", 32): ("diffgrad-dfc1", 94.37),
    ("cifar10", 64): ("diffgrad-dfc4", 94.33),
    ("cifar10", 128): ("diffgrad-dfc3", 94.19),
    ("cifar100", 32): ("diffgrad-dfc2", 75.55),
    ("cifar100", 64): ("diffgrad-dfc5", 75.55),
    ("cifar100", 128): ("diffgrad-dfc3", 75.45),
}
# Table III: diffGrad, ResNet-50, CIFAR-10, batch sizes 32 / 64 / 128.
TABLE3 = {
    "relu": (93.90, 94.05, 94.08),
    "leaky_relu": (94.31, 94.28, 94.16),
    "elu": (94.16, 94.16, 94.10),
    "selu": (93.48, 93.34, 93.38),
}
