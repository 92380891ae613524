"""The opening every kernel script shares, pasted in by `kzlib kaggle render` where a template says
its bootstrap line: find the kit dataset under /kaggle/input (either mount layout), import it,
and open the session (inputs found and checked, wheels installed, the GPU checked).
It reads the values block of the kernel it is pasted into (KERNEL, STAGES, UPSTREAM, GPU,
CONTINUATION, BUDGET_HOURS, PRESET).
"""
# ---- bootstrap ----
import os
import sys
from pathlib import Path

INPUT = Path(os.environ.get("KAGGLE_INPUT_ROOT", "/kaggle/input"))


def find_kit(root: Path) -> Path | None:
    """The kit dataset: the folder holding kzlib/__init__.py, at any depth of either layout."""
    for depth in range(6):
        for init in sorted(root.glob("/".join(["*"] * depth + ["kzlib", "__init__.py"]))):
            return init.parent.parent
    return None


KIT = find_kit(INPUT)
if KIT is None:
    print(f"error: the kzlib kit dataset is not attached under {INPUT} (no kzlib/__init__.py); add it to the "
          f"kernel's inputs. Mounted: {sorted(p.name for p in INPUT.glob('*'))}", file=sys.stderr)
    sys.exit(1)
sys.path.insert(0, str(KIT))

from kzlib.kaggle.session import Session  # noqa: E402

session = Session.open(KERNEL, STAGES, UPSTREAM, GPU, CONTINUATION, BUDGET_HOURS, PRESET, KIT)
