"""The layer contract: every module imports only from the layers below it (import-linter, contracts in
pyproject.toml). The repository's folders install as one namespace, so the check runs on a copy laid out as the
installed ``sam_distill`` package."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGE_FOLDERS = ("students", "export", "eval")  # pyproject's [tool.setuptools.package-dir]


def installed_layout(tmp_path: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__")
    package = tmp_path / "sam_distill"
    shutil.copytree(ROOT / "distill", package, ignore=ignore)
    for folder in SUBPACKAGE_FOLDERS:
        shutil.copytree(ROOT / folder, package / folder, ignore=ignore)
    return tmp_path


def lint_imports(site: Path) -> subprocess.CompletedProcess:
    linter = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(linter), str(ROOT / "pyproject.toml"), "--no-cache"], cwd=site,
                          env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          timeout=120)


def test_layers_import_only_downward(tmp_path):
    result = lint_imports(installed_layout(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The check can fail: a core module importing the CLI is reported."""
    site = installed_layout(tmp_path)
    with open(site / "sam_distill" / "core" / "errors.py", "a") as f:
        f.write("\nimport sam_distill.cli  # noqa\n")
    result = lint_imports(site)
    assert result.returncode != 0
    assert "sam_distill.core is not allowed to import sam_distill.cli" in result.stdout
