"""`make test-all`: which Pythons it finds (pyenv, PATH, an override), what it says about
each, and that a missing one fails; the Pythons it runs are the ones pyproject.toml declares."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def fake_python(path: Path, version: str) -> Path:
    """An executable that answers the two questions the scripts ask an interpreter."""
    path.parent.mkdir(parents=True, exist_ok=True)
    minor = ".".join(version.split(".")[:2])
    path.write_text(
        f'#!/bin/sh\ncase "$2" in *python_version*) echo {version};; *) echo {minor};; esac\n'
    )
    path.chmod(0o755)
    return path


def fake_pyenv(root: Path, *versions: str) -> Path:
    for version in versions:
        minor = ".".join(version.split(".")[:2])
        fake_python(root / "versions" / version / "bin" / f"python{minor}", version)
    return root


def scripts_env(tmp_path: Path, pyenv_root: Path, **extra: str) -> dict[str, str]:
    """No pyenv command and no pythonX.Y on PATH but a shim that fails, as pyenv's does for
    a version that is not selected; PYENV_ROOT names the fake versions folder."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "python3.12"
    shim.write_text("#!/bin/sh\necho 'pyenv: python3.12: command not found' >&2\nexit 127\n")
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYENV", "PYTHON_3"))}
    env.update(PATH=f"{bin_dir}:/usr/bin:/bin", PYENV_ROOT=str(pyenv_root), **extra)
    return env


def find_python(version: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROOT / ".ci" / "find-python"), version],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_newest_pyenv_patch_is_found_and_a_failing_shim_passed_over(tmp_path: Path) -> None:
    root = fake_pyenv(tmp_path / "pyenv", "3.12.1", "3.12.10", "3.12.9", "3.11.7")
    fake_python(root / "versions" / "3.12-dev" / "bin" / "python3.12", "3.12.11")
    env = scripts_env(tmp_path, root)

    found = find_python("3.12", env)

    assert found.returncode == 0, found.stderr
    assert found.stdout == f"{root}/versions/3.12.10/bin/python3.12\n"


def test_an_override_wins_and_a_missing_python_says_how_to_get_it(tmp_path: Path) -> None:
    root = fake_pyenv(tmp_path / "pyenv", "3.13.0")
    chosen = fake_python(tmp_path / "opt" / "python3.13", "3.13.5")

    found = find_python("3.13", scripts_env(tmp_path, root, PYTHON_3_13=str(chosen)))
    assert found.stdout == f"{chosen}\n"

    missing = find_python("3.14", scripts_env(tmp_path, root))
    assert missing.returncode == 1
    assert missing.stdout == ""
    assert "no Python 3.14 found" in missing.stderr
    assert "pyenv install 3.14" in missing.stderr and "PYTHON_3_14" in missing.stderr


def test_test_all_names_each_python_and_fails_on_a_failed_or_missing_one(tmp_path: Path) -> None:
    """`make test` (a fake here) runs once per Python, in its own venv; the summary says
    which interpreter ran and how it ended; exit 1 when one failed or was not found."""
    copy = tmp_path / "repo"
    (copy / ".ci").mkdir(parents=True)
    for script in ("find-python", "test-all"):
        shutil.copy(ROOT / ".ci" / script, copy / ".ci" / script)
    calls = tmp_path / "calls.txt"
    make = tmp_path / "make"
    make.write_text(
        f'#!/bin/sh\necho "$@" >> {calls}\ncase "$*" in *VENV=.venv-3.12*) exit 2;; esac\n'
    )
    make.chmod(0o755)
    root = fake_pyenv(tmp_path / "pyenv", "3.11.7", "3.12.1")
    env = scripts_env(tmp_path, root, MAKE=str(make))

    ran = subprocess.run(
        ["bash", str(copy / ".ci" / "test-all"), "3.11", "3.12", "3.14"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )

    assert ran.returncode == 1
    python311 = root / "versions/3.11.7/bin/python3.11"
    python312 = root / "versions/3.12.1/bin/python3.12"
    assert calls.read_text().splitlines() == [
        f"test PYTHON={python311} VENV=.venv-3.11",
        f"test PYTHON={python312} VENV=.venv-3.12",
    ]
    summary = ran.stdout.split("=== test-all summary\n")[1].splitlines()
    assert summary == [
        f"test-all: Python 3.11.7 ({python311}): passed",
        f"test-all: Python 3.12.1 ({python312}): FAILED (make test exited 2)",
        "test-all: Python 3.14: MISSING (no interpreter found; see the message above)",
        "test-all: FAILED on at least one Python (3.11 3.12 3.14)",
    ]
    assert "no Python 3.14 found" in ran.stderr


def test_test_all_runs_the_pythons_pyproject_declares() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [
        c.rsplit(" :: ", 1)[1]
        for c in project["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    ]
    pythons = re.search(r"^PYTHONS := (.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert pythons is not None
    assert pythons[1].split() == declared == ["3.11", "3.12", "3.13"]
    assert project["requires-python"] == f">={declared[0]}"
    assert "make test-all" in (ROOT / ".ci" / "run").read_text()
