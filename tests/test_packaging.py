"""The package as users install it: a wheel that carries the bundled recipes, and the metadata in setup.cfg."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
# Not copied into the build: environments, VCS data, build outputs and run/data folders (at the root only:
# `distill/data` is a package).
SKIPPED_AT_ROOT = {".venv", ".git", "build", "dist", "runs", "data", "lightning_logs", ".ruff_cache", ".pytest_cache"}


def source_copy(target: Path) -> Path:
    """The project's files, copied: an in-tree build would write build/ into the working tree (where a stale
    build/lib can hide a file missing from the sources) and race with other test runs."""

    def ignore(folder: str, names: list[str]) -> set[str]:
        skipped = SKIPPED_AT_ROOT if Path(folder) == ROOT else set()
        return {n for n in names if n in skipped or n == "__pycache__" or n.endswith(".egg-info")}

    return Path(shutil.copytree(ROOT, target, ignore=ignore))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    source = source_copy(tmp / "src")
    command = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*command, "-w", str(tmp / "dist")], check=True, capture_output=True, timeout=120)
    (built,) = (tmp / "dist").glob("distill-*.whl")
    return built


def test_wheel_contents(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = configparser.ConfigParser()
        scripts.read_string(archive.read(entry_points).decode())
    assert "recipes/quickstart_digits.yaml" in names
    assert {"losses/__init__.py", "distill/__init__.py", "distill/cli/__init__.py"} <= names
    assert {"distill/data/__init__.py", "distill/models/__init__.py", "distill/config/__init__.py"} <= names
    assert scripts["console_scripts"]["distill"].strip() == "distill.cli:main"
    assert not any(n.startswith("tests/") for n in names)


def test_bundled_recipes_resolve_from_the_installed_wheel(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    code = (
        "import json, distill, recipes\n"
        "from distill.config.load import bundled_recipes, locate\n"
        "print(json.dumps({'distill': distill.__file__, 'recipes': recipes.__file__,"
        " 'quickstart': str(locate('quickstart_digits')), 'bundled': sorted(bundled_recipes())}))\n"
    )
    # The working tree's editable install is on the path too: the checks below prove the wheel's files were used.
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("distill", "recipes", "quickstart"):
        assert Path(found[key]).resolve().is_relative_to(site.resolve()), (key, found[key])
    assert Path(found["quickstart"]).is_file() and Path(found["quickstart"]).name == "quickstart_digits.yaml"
    assert "quickstart_digits" in found["bundled"]


# setup.cfg


@pytest.fixture(scope="module")
def setup_cfg() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    assert config.read(ROOT / "setup.cfg")
    return config


def lines(value: str) -> list[str]:
    return [line.strip() for line in value.splitlines() if line.strip() and not line.strip().startswith("#")]


def requirements(setup_cfg: configparser.ConfigParser) -> dict[str, Requirement]:
    return {(r := Requirement(line)).name.lower(): r for line in lines(setup_cfg["options"]["install_requires"])}


def test_console_script(setup_cfg: configparser.ConfigParser) -> None:
    scripts = dict(
        line.replace(" ", "").split("=", 1) for line in lines(setup_cfg["options.entry_points"]["console_scripts"])
    )
    assert scripts == {"distill": "distill.cli:main"}
    import distill.cli

    assert callable(distill.cli.main)


def test_extras(setup_cfg: configparser.ConfigParser) -> None:
    extras = setup_cfg["options.extras_require"]
    assert {"llm", "clip", "dev"} <= set(extras)
    dev = {Requirement(line).name for line in lines(extras["dev"])}
    assert {"pytest", "ruff"} <= dev


def test_bnb_extra_installs_a_bitsandbytes_that_transformers_loads_8_bit_weights_with(
    setup_cfg: configparser.ConfigParser,
) -> None:
    """teacher.dtype=int8 loads through transformers' 8-bit quantizer, which refuses bitsandbytes below its minimum."""
    import_utils = pytest.importorskip("transformers.utils.import_utils")
    (requirement,) = (Requirement(line) for line in lines(setup_cfg["options.extras_require"]["bnb"]))
    floors = [Version(spec.version) for spec in requirement.specifier if spec.operator == ">="]
    assert requirement.name == "bitsandbytes" and floors
    assert min(floors) >= Version(import_utils.BITSANDBYTES_MIN_VERSION)


def test_core_dependencies(setup_cfg: configparser.ConfigParser) -> None:
    assert {"lightning", "torch", "torchvision", "timm", "torchmetrics", "omegaconf"} <= set(requirements(setup_cfg))


@pytest.mark.parametrize(("name", "version"), [("torch", "2.14.1"), ("torchvision", "0.29.1")])
def test_torch_pair_this_project_is_tested_with_is_admitted(
    setup_cfg: configparser.ConfigParser, name: str, version: str
) -> None:
    specifier: SpecifierSet = requirements(setup_cfg)[name].specifier
    assert specifier, f"{name} has no version range"
    assert specifier.contains(version) and specifier.contains(f"{version}+cu130")  # local builds (CUDA wheels)
