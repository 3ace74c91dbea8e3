"""cache.redis_client.stream, the one shortcut past redis-py's pipeline that tokenwatch keeps, at both ends of the
redis-py range pyproject.toml admits: the environment's own (the newest in range) and the lowest, installed
beside it by ``scripts/setup --test``."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import redis

from tests.conftest import ROOT

pytestmark = pytest.mark.integration

LOW_END = Path(sys.prefix) / "ends" / "redis-low"
STREAM_TESTS = ("tests/unit/test_redis_stream.py", "tests/integration/test_redis_stream.py",
                "tests/unit/test_redis_packer.py", "tests/unit/test_hot_cache.py")


def admitted_range() -> tuple[tuple[int, ...], int]:
    """(lowest version, first major excluded) of the redis requirement in pyproject.toml."""
    requirements = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (spec,) = [r for r in requirements if r.startswith("redis[")]
    match = re.fullmatch(r"redis\[hiredis\]>=([\d.]+),<(\d+)", spec)
    assert match, spec
    return version(match.group(1)), int(match.group(2))


def version(text: str) -> tuple[int, ...]:
    """A version's numbers, trailing zeros dropped: 5.3.0 is 5.3."""
    numbers = [int(part) for part in text.split(".")[:3]]
    while numbers and numbers[-1] == 0:
        numbers.pop()
    return tuple(numbers)


def test_the_environment_runs_the_newest_admitted_major() -> None:
    low, excluded = admitted_range()
    assert low <= version(redis.__version__) < (excluded,)
    assert version(redis.__version__)[0] == excluded - 1, "the high end is no longer tested: raise the bound"


def test_the_stream_shortcut_at_the_lowest_admitted_redis_py() -> None:
    low, _ = admitted_range()
    assert LOW_END.is_dir(), f"{LOW_END} is missing: scripts/setup --test installs the low end"
    env = {"PYTHONPATH": f"{LOW_END}", "PATH": "/usr/bin:/bin"}
    probe = subprocess.run([sys.executable, "-c", "import redis; print(redis.__version__)"], env=env,
                           capture_output=True, text=True, check=True)
    assert version(probe.stdout.strip()) == low
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *STREAM_TESTS],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert re.search(r"\b\d+ passed\b", result.stdout), result.stdout[-1000:]
