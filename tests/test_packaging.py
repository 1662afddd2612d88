"""The package as people install it beside other tools: ranges, a lock file, a clean build."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    return pins


def test_dependencies_are_ranges_and_the_lock_file_pins_each_within_them() -> None:
    deps = (
        PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["dev"]
    )
    pins = _pins()
    for text in deps:
        req = Requirement(text)
        assert not any(s.operator in ("==", "===") for s in req.specifier), f"{text} is a pin"
        assert req.specifier, f"{text} has no range"
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"constraints.txt does not pin {req.name}: run make constraints"
        assert req.specifier.contains(pins[name]), f"{req.name}=={pins[name]} is outside {text}"


def test_make_and_ci_install_from_the_lock_file() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    stamp = makefile[makefile.index("$(STAMP):") :].split("\n\n")[0]
    assert "$(CONSTRAINTS)" in stamp.splitlines()[0]  # a new lock file reinstalls
    installs = stamp.replace("\\\n", " ").split("install ")[1:]
    assert len(installs) >= 2  # the installer, then the project
    assert all("-c $(CONSTRAINTS)" in words for words in installs)
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


@pytest.mark.slow
def test_the_wheel_builds_without_warnings_and_ships_what_an_install_needs(
    tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "bulk_unenroll", src / "bulk_unenroll")
    build = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-index"),
            *("--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    log = build.stdout + build.stderr
    assert not re.search(r"(?i)deprecat", log), log
    (wheel,) = (tmp_path / "dist").glob("bulk_unenroll-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(z.read(meta_name).decode())
    # The demo needs the repository's sample_data/: it lives in examples/, not in the package.
    assert "bulk_unenroll/demo.py" not in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("Project-URL")
    requires = meta.get_all("Requires-Dist") or []
    assert any(r.startswith("rich") and "<16" in r for r in requires)
    assert not [r for r in requires if any(s.operator == "==" for s in Requirement(r).specifier)]
