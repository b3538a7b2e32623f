import os
import sys
from pathlib import Path

import torch

# The optimizer tests import their independent reference implementation as a plain module.
sys.path.insert(0, str(Path(__file__).parent / "optim"))

# Without a GPU, Triton kernels run in Triton's interpreter, on CPU tensors
# (optim/test_fused_triton.py). Triton reads this once, when it is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
