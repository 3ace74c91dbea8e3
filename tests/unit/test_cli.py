"""The command line's exit statuses and the printed Celery configuration (subprocesses, no services)."""

from __future__ import annotations

import os
import subprocess
import sys

from celery.app.defaults import DEFAULTS

from tests.conftest import ROOT
from tokenwatch.cli import Exit


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TOKENWATCH_")}
    return subprocess.run([sys.executable, *args], env={**clean, **env}, cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)


def test_a_wrong_command_line_exits_64_never_2_which_reads_as_an_alert() -> None:
    result = run("-m", "tokenwatch.cli", "status", "--no-such-option")
    assert result.returncode == Exit.USAGE == 64
    assert "unrecognized arguments: --no-such-option" in result.stderr


def test_a_bad_setting_exits_78_with_one_line_naming_it() -> None:
    result = run("-m", "tokenwatch.cli", "status", TOKENWATCH_SYNC_INTERVAL_S="soon")
    assert result.returncode == Exit.CONFIG == 78
    assert result.stderr.splitlines() == [
        "tokenwatch: invalid TOKENWATCH_SYNC_INTERVAL_S: Input should be a valid number, unable to parse string as "
        "a number"]


def test_celeryconfig_prints_celery_settings_only_with_passwords_hidden() -> None:
    result = run("-m", "tokenwatch.celeryconfig", TOKENWATCH_REDIS_URL="redis://:s3cret@127.0.0.1:6379/0")
    assert result.returncode == 0, result.stderr
    names = [line.split(" = ", 1)[0] for line in result.stdout.splitlines()]
    assert {"broker_url", "result_backend", "beat_schedule", "task_routes"} <= set(names)
    assert all(name in DEFAULTS or name.startswith("redbeat_") for name in names)  # Celery's and redbeat's
    assert "redbeat_redis_url = 'redis://***@127.0.0.1:6379/0'" in result.stdout
    assert "s3cret" not in result.stdout
    assert "broker_url = 'redis://***@127.0.0.1:6379/0'" in result.stdout
