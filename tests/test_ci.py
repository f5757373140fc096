"""CI is reproducible: it installs with .ci/constraints.txt, every dependency is pinned there within the ranges
pyproject.toml allows, the README says so, and CI prints the versions it ran with."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import ROOT

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / ".ci" / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            spec = list(req.specifier)
            assert len(spec) == 1 and spec[0].operator == "==", f"constraints pin exact versions: {line}"
            pins[canonicalize_name(req.name)] = spec[0].version
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in project["dependencies"] + extras["test"] + extras["batch"] + extras["train"]]


def test_ci_installs_with_the_constraints_file():
    script = (ROOT / ".ci" / "run").read_text()
    install = [line for line in script.splitlines() if "pip install" in line and "-e" in line]
    assert install and all("-c .ci/constraints.txt" in line for line in install), install
    assert ".ci/versions.py" in script
    assert "-c .ci/constraints.txt" in (ROOT / "README.md").read_text()


def test_ci_runs_the_readmes_test_command():
    """The README's test command is the one CI runs (CI says python3 where a venv's python is meant)."""
    runs = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("python3 -m pytest")]
    assert len(runs) == 1, runs
    readme = (ROOT / "README.md").read_text()
    assert re.search(rf"^{re.escape(runs[0].replace('python3', 'python', 1))}\s*(#|$)", readme, re.M), runs[0]
    assert 'pip install -c .ci/constraints.txt -e ".[test,train]"' in readme  # the extras CI installs


@pytest.mark.parametrize("req", _requirements(), ids=lambda r: r.name)
def test_every_dependency_is_pinned_inside_its_range(req):
    pins = _pins()
    name = canonicalize_name(req.name)
    assert name in pins, f"{req.name} is not pinned in .ci/constraints.txt"
    assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} is outside {req}"


def test_ci_prints_one_line_of_versions():
    out = subprocess.run([sys.executable, str(ROOT / ".ci" / "versions.py")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1 and re.match(r"CI versions: python \d+\.\d+", lines[0])
    assert f"torch {torch.__version__}" in lines[0]
