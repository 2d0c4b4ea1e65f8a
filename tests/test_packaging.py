"""A regular (non-editable) install carries the package's data: the target files, the tuned tiles."""

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent


def test_wheel_ships_target_files_and_tuned_tiles(tmp_path):
    src = tmp_path / "src"                 # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(REPO / "hwq", src / "hwq", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    # the environment's own setuptools where it has one (no download), else pip's isolated build
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q",
                           "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    wheel, = (tmp_path / "dist").glob("hwq-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    targets = {p.name for p in (REPO / "hwq" / "targets").glob("*.toml")}
    assert targets and {f"hwq/targets/{t}" for t in targets} <= names
    tuned = {p.name for p in (REPO / "hwq" / "lower" / "kernels" / "tuned").glob("*.json")}
    assert tuned and {f"hwq/lower/kernels/tuned/{t}" for t in tuned} <= names
    measured = {p.relative_to(REPO / "hwq").as_posix() for p in (REPO / "hwq" / "cost" / "measured").glob("*/*.json")}
    assert measured and {f"hwq/{m}" for m in measured} <= names
