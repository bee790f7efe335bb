"""A wheel installed into a fresh venv carries conf/ and runs from any directory (`python -m
pipeline.train` itself runs in every CLI test, from the checkout)."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

from helpers import cli_env, only_run_dir

REPO = Path(__file__).resolve().parents[2]


def test_wheel_runs_from_an_unrelated_directory(tmp_path: Path, torch_home: Path) -> None:
    dist = tmp_path / "dist"
    # The build backend from the dev install (pyproject's dev extra), not a fresh isolated one.
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [*pip, "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(dist), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = dist.glob("pipeline-*.whl")
    venv = tmp_path / "fresh"
    # No pip of its own: this pip installs into it (--python), as it would with its own.
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    python = venv / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    # torch & co. come from the test's own environment (read-only); the package only from the wheel.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            *pip,
            "--python",
            str(python),
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        check=True,
        timeout=120,
    )

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    located = subprocess.check_output(
        [python, "-c", "import pipeline.config_dir as c; print(c.CONFIG_DIR)"],
        cwd=elsewhere,
        text=True,
    )
    assert located.strip().startswith(str(site))  # the wheel's conf/, not the checkout's
    env = cli_env(torch_home)
    result = subprocess.run(
        [venv / "bin" / "pipeline-train", "debug=fast", "callbacks.progress_bar=false"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    assert (only_run_dir(elsewhere) / "checkpoints" / "last.ckpt").is_file()
