"""`./scripts/run` on a fresh checkout sets up a .venv with what tokenwatch needs to run, and no test tools.

Real processes: the script itself, python -m venv and pip (from the configured package index), on a copy of the
files a commit holds. Slow (a whole install): about a minute.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration

TEST_TOOLS = ("pytest", "hypothesis", "mypy", "ruff", "fakeredis", "yaml")


def checkout(into: Path) -> Path:
    """The files a commit would hold, as a fresh clone has them (no .venv)."""
    git = shutil.which("git") or "git"
    listed = subprocess.run([git, "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        origin, target = ROOT / name, into / name
        if not origin.exists() and not origin.is_symlink():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if origin.is_symlink():
            target.symlink_to(origin.readlink())
        else:
            shutil.copy2(origin, target)
    return into


@pytest.mark.timeout(900)
def test_scripts_run_installs_the_runtime_only(tmp_path: Path) -> None:
    project = checkout(tmp_path / "tokenwatch")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENWATCH_", "VIRTUAL_ENV", "PYTHON"))}
    result = subprocess.run([str(project / "scripts" / "run"), "--help"], cwd=project, env=env, capture_output=True,
                            text=True, timeout=840, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "usage: tokenwatch run" in result.stdout
    python = str(project / ".venv" / "bin" / "python")
    runtime = subprocess.run([python, "-c", "import tokenwatch.cli, celery, flower, redis, sqlalchemy"],
                             capture_output=True, text=True, timeout=60, check=False)
    assert runtime.returncode == 0, runtime.stderr[-2000:]
    for tool in TEST_TOOLS:
        found = subprocess.run([python, "-c", f"import {tool}"], capture_output=True, timeout=60, check=False)
        assert found.returncode != 0, f"{tool} is installed by ./scripts/run"
    assert not (project / ".venv" / "ends").exists()  # the second redis-py of the tests
    assert [stamp.name for stamp in (project / ".venv").glob(".tokenwatch-installed-*")] == [
        ".tokenwatch-installed-run"]
