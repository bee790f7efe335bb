"""The non-finite guard's mechanism alone, pure torch: the flag ring reads a step's flag when
step + lag + 1 starts, never overwrites a flag it has not read, and (sticky) makes a fused
optimizer skip; the buffer snapshot puts BatchNorm's statistics back bitwise after a bad step."""

from __future__ import annotations

import subprocess
import sys


def test_the_mechanism_imports_no_lightning() -> None:
    code = "import sys, pipeline.nonfinite_guard; print(sorted({m.split('.')[0] for m in sys.modules}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "torch" in done.stdout and "lightning" not in done.stdout
