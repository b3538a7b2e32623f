import sys
from pathlib import Path

# The optimizer tests import their independent reference implementation as a plain module.
sys.path.insert(0, str(Path(__file__).parent / "optim"))
