"""The package list in pyproject.toml names every package, so that a plain (non-editable)
``pip install .`` — what an HPC module or a wheel gets — installs all of ptyengine."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_installed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts)
               for p in (ROOT / "ptyengine").rglob("__init__.py")}
    missing = sorted(on_disk - listed)
    assert not missing, f"pyproject.toml [tool.setuptools] packages lacks {missing}"
    for name, folder in config.get("package-dir", {}).items():
        assert (ROOT / folder / "__init__.py").is_file(), f"{name} -> {folder} has no __init__.py"
