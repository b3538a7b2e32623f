"""Every script in examples/ runs on tiny settings and reports success.

Each example runs in its own process, as a user would run it (the distributed ones under
``torch.distributed.run`` with 2 gloo ranks), and must exit with 0 and print its ``OK`` line.
Examples whose framework is not installed are skipped (``pip install -e ".[examples]"``).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300


def run_example(script: str, *args: str, nproc: int = 0) -> str:
    """Run ``examples/<script>`` with ``args``; return its output (stdout and stderr together)."""
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc else []
    command = [sys.executable, *launcher, str(ROOT / "examples" / script), *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        # The cause is usually near the start (a rank's traceback), the launcher's summary at the end.
        shown = output if len(output) < 12000 else output[:6000] + "\n[...]\n" + output[-6000:]
        pytest.fail(f"{' '.join(command)} exited with {result.returncode}:\n{shown}", pytrace=False)
    return output


def needs(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install -e '.[examples]')")


def test_train_amp() -> None:
    assert "OK train_amp" in run_example("train_amp.py", "--steps", "4")


def test_compile() -> None:
    # The example logs graph breaks (torch._logging) and fails on a non-zero graph-break count.
    output = run_example("compile.py", "--steps", "3")
    assert "OK compile" in output
    assert "graph breaks 0" in output and "Graph break" not in output, output[-4000:]


def test_hf_trainer() -> None:
    needs("transformers")
    needs("accelerate")
    assert "OK hf_trainer" in run_example("hf_trainer.py", "--steps", "4")


def test_lightning_module() -> None:
    needs("lightning")
    assert "OK lightning_module" in run_example("lightning_module.py", "--steps", "3")


def test_timm_factory() -> None:
    needs("timm")
    # timm imports torchvision, which fails to import when built for another torch (a CUDA
    # torchvision next to the CPU torch): that is an environment without a usable timm.
    probe = subprocess.run([sys.executable, "-c", "import timm.optim"], capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"timm does not import here: {probe.stderr.strip().splitlines()[-1]}")
    output = run_example("timm_factory.py", "--steps", "2")
    assert "DiffGrad with" in output and "OK timm_factory" in output


distributed = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="this torch build has no torch.distributed with the gloo backend",
)


@distributed
def test_ddp() -> None:
    assert "OK ddp" in run_example("ddp.py", "--steps", "3", nproc=2)


@distributed
def test_fsdp2_dcp() -> None:
    assert "OK fsdp2_dcp" in run_example("fsdp2_dcp.py", "--steps", "4", nproc=2)
