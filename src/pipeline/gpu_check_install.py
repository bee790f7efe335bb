"""What `make gpu-check` installs on a bare GPU machine before its checks: the packages the
pipeline needs that the machine's image lacks, from wheels carried with the checkout (wheels/,
which `make gpu-wheels` fills and the device call carries: it is git-ignored).

Imports the standard library only: gpu-check itself runs in the machine's own Python, before
these are there (tests/e2e/test_gpu_check.py runs it with them hidden).
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
from pathlib import Path

WHEELS = Path("wheels")
# module: distribution. The run needs these, with what they need in turn (pip installs into a
# folder of its own with --no-deps: see install_command). The GPU machine's image has PyYAML
# and packaging; the others come from wheels/.
NEEDED = {
    "hydra": "hydra-core",
    "omegaconf": "omegaconf",
    "antlr4": "antlr4-python3-runtime",  # hydra-core's and omegaconf's parser
    "yaml": "pyyaml",
    "packaging": "packaging",
}
# Installed where a wheel fits this Python, and left out with a warning where none does: the
# runs fall back without them. google-crc32c is TensorBoard's fast checksum (tensorboard_events:
# its own is pure Python), a binary wheel a Python version.
WANTED = {"google_crc32c": "google-crc32c"}


def missing(modules: dict[str, str]) -> list[str]:
    """The distributions of `modules` (module: distribution) this Python cannot import."""
    return [dist for module, dist in modules.items() if importlib.util.find_spec(module) is None]


def install_command(python: str, site: Path, distributions: list[str]) -> list[str]:
    """pip's command for `distributions`, from the carried wheels, into `site` (a folder of its
    own: a GPU machine's Python environment may not be writable; with --target pip ignores what
    is installed, hence --no-deps and every need named)."""
    return [python, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
            "--target", str(site), "--find-links", str(WHEELS), *distributions]  # fmt: skip


def install_missing(python: str, site: Path) -> str | None:
    """Install what this Python lacks into `site` and put it first on PYTHONPATH for every
    check's process (pytest, the benches, the runs they start), the other entries made absolute
    (a run started in another folder finds them too); the problem, if a needed one failed."""
    needed, wanted = missing(NEEDED), missing(WANTED)
    if (needed or wanted) and not WHEELS.is_dir():
        return (f"this Python lacks {', '.join(needed + wanted)} and there is no {WHEELS}/ "
                f"folder: run `make gpu-wheels` where PyPI is reachable and carry {WHEELS}/ "
                "with the checkout")  # fmt: skip
    if needed:
        command = install_command(python, site, needed)
        print("gpu-check: " + shlex.join(command), flush=True)
        if subprocess.run(command).returncode != 0:
            return f"installing from {WHEELS}/ failed (above); `make gpu-wheels` fills it"
    for dist in wanted:
        command = install_command(python, site, [dist])
        print("gpu-check: " + shlex.join(command), flush=True)
        if subprocess.run(command).returncode != 0:
            print(f"gpu-check: no {dist} wheel in {WHEELS}/ fits this Python; the runs go on "
                  "without it (slower TensorBoard writes)", flush=True)  # fmt: skip
    paths = [str(site)] if needed or wanted else []
    paths += [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if paths:
        os.environ["PYTHONPATH"] = os.pathsep.join(paths)
    return None
