"""What `make gpu-check` installs on a bare GPU machine, from the carried wheels (real pip runs
on wheels made here)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pipeline import gpu_check_install
from pipeline.gpu_check_install import NEEDED, install_command, install_missing, missing


def test_what_a_bare_gpu_machine_lacks_comes_from_the_carried_wheels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert missing(NEEDED) == [] and missing(gpu_check_install.WANTED) == []  # all here
    real = importlib.util.find_spec
    absent = {"hydra", "antlr4"}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name in absent else real(name)
    )
    assert missing(NEEDED) == ["hydra-core", "antlr4-python3-runtime"]
    assert install_command("python3", Path("/tmp/site"), missing(NEEDED)) == [
        "python3", "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
        "--target", "/tmp/site", "--find-links", "wheels", "hydra-core", "antlr4-python3-runtime",
    ]  # fmt: skip


def _wheel(folder: Path, module: str) -> None:
    """A wheel of one module, `module` = 1, as pip builds them (PEP 427)."""
    dist = module.replace("_", "-")
    info = f"{module}-1.0.dist-info"
    files = {
        f"{module}.py": "VALUE = 1\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(folder / f"{module}-1.0-py3-none-any.whl", "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)


def _imports(module: str) -> subprocess.CompletedProcess[str]:
    """A new process, started from another folder, that imports `module` and prints its VALUE."""
    code = f"import {module}; print({module}.VALUE)"
    return subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True,
                          timeout=60)  # fmt: skip


def test_the_carried_wheels_install_into_a_folder_every_check_process_imports_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pip installs what is missing into a folder of its own (a GPU machine's environment may be
    read-only) and the checks' processes (pytest, the benches, the runs they start, from any
    folder) find it, and the checkout's src, on PYTHONPATH."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", "src")
    monkeypatch.setattr(gpu_check_install, "NEEDED", {"gpu_check_probe": "gpu-check-probe"})
    monkeypatch.setattr(gpu_check_install, "WANTED", {})
    site = tmp_path / "site"
    assert install_missing(sys.executable, site) == (
        "this Python lacks gpu-check-probe and there is no wheels/ folder: run `make gpu-wheels` "
        "where PyPI is reachable and carry wheels/ with the checkout"
    )
    (tmp_path / "wheels").mkdir()
    problem = install_missing(sys.executable, site)
    assert problem == "installing from wheels/ failed (above); `make gpu-wheels` fills it"
    assert os.environ["PYTHONPATH"] == "src"
    _wheel(tmp_path / "wheels", "gpu_check_probe")
    assert install_missing(sys.executable, site) is None
    assert os.environ["PYTHONPATH"] == os.pathsep.join([str(site), str(tmp_path / "src")])
    child = _imports("gpu_check_probe")
    assert child.stdout == "1\n", child.stderr


def test_a_wanted_package_without_a_wheel_for_this_python_is_left_out_with_a_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """google-crc32c is a binary wheel a Python version and the runs do without it: its missing
    wheel ended gpu-check before any check, with the needed ones installed."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.setattr(gpu_check_install, "NEEDED", {"gpu_check_needed": "gpu-check-needed"})
    monkeypatch.setattr(gpu_check_install, "WANTED", {"gpu_check_wanted": "gpu-check-wanted"})
    (tmp_path / "wheels").mkdir()
    _wheel(tmp_path / "wheels", "gpu_check_needed")
    site = tmp_path / "site"
    assert install_missing(sys.executable, site) is None
    assert "no gpu-check-wanted wheel in wheels/ fits this Python; the runs go on without it" in (
        capsys.readouterr().out
    )
    assert os.environ["PYTHONPATH"] == str(site)
    assert _imports("gpu_check_needed").stdout == "1\n"
