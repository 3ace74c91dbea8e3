"""The built wheel installs one import root, and a bot with its own db/, cache/, tasks.py and celeryconfig.py
uses the read API from it without either side seeing the other's modules."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, Stack
from tokenwatch.simulator import Simulator

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The wheel built from a copy of the project's files, as a clean checkout would build it."""
    source = tmp_path_factory.mktemp("source")
    git = shutil.which("git") or "git"
    listed = [git, "ls-files", "-z", "--cached", "--others", "--exclude-standard"]  # what a commit would hold
    tracked = subprocess.run(listed, cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        origin, target = ROOT / name, source / name
        if not origin.exists() and not origin.is_symlink():
            continue  # deleted in the work tree, not yet committed
        target.parent.mkdir(parents=True, exist_ok=True)
        if origin.is_symlink():
            target.symlink_to(origin.readlink())
        else:
            shutil.copy2(origin, target)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
         "--disable-pip-version-check", "-w", str(out), str(source)],
        check=True, capture_output=True, timeout=300,
    )
    (built,) = out.glob("tokenwatch-*.whl")
    yield built


def test_the_wheel_installs_one_import_root(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")] or [None]
        roots = {name.split("/", 1)[0] for name in names if not name.split("/", 1)[0].endswith(".dist-info")}
        assert roots == {"tokenwatch"}
        if top_level is not None:
            assert archive.read(top_level).decode().split() == ["tokenwatch"]
    # The top-level folders ship inside it, whole.
    for package in ("db", "cache", "domain", "fetch", "tasks", "workers"):
        shipped = {n.split("/", 2)[2] for n in names if n.startswith(f"tokenwatch/{package}/") and n.endswith(".py")}
        on_disk = {str(p.relative_to(ROOT / package)) for p in (ROOT / package).rglob("*.py")}
        assert shipped == on_disk, package
    assert "tokenwatch/celeryconfig.py" in names
    assert "tokenwatch/db/migrations/script.py.mako" in names  # `alembic revision` works on an installed copy


BOT = {
    "db/__init__.py": "WHO = 'the bot'\n",
    "db/engine.py": "WHO = 'the bot'\n",
    "cache/__init__.py": "WHO = 'the bot'\n",
    # Celery's own convention: a bot's tasks.py. Importing it by accident would leave this file behind.
    "tasks.py": "import pathlib\npathlib.Path('tasks-was-imported').write_text('yes')\n",
    "celeryconfig.py": "broker_url = 'memory://the-bot'\nbeat_schedule = {}\n",
    "bot.py": textwrap.dedent("""
        import json, os, sys
        from celery import Celery
        from tokenwatch.reader import Registry

        with Registry(sys.argv[1], sys.argv[2]) as registry:
            contract = registry.get(sys.argv[3])
            active = len(registry.active())
        import cache, db, db.engine
        app = Celery("bot")
        app.config_from_object("celeryconfig")
        print(json.dumps({
            "symbol": contract["symbol"], "active": active, "db": db.WHO, "db.engine": db.engine.WHO,
            "cache": cache.WHO, "tasks imported": os.path.exists("tasks-was-imported"),
            "broker": app.conf.broker_url, "beat": app.conf.beat_schedule,
            "tokenwatch from": sys.modules["tokenwatch"].__path__[0],
        }))
    """),
}


def test_a_bot_with_its_own_db_cache_tasks_and_celeryconfig_reads_the_registry(
    wheel: Path, stack: Stack, tmp_path: Path,
) -> None:
    with Simulator(port=0, contracts=30, seed=3) as sim:
        stack.env["TOKENWATCH_KUCOIN_URL"] = sim.url
        assert stack.sync("--inline")["status"] == "baseline"
        symbol = sim.symbols()[0]
    installed = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(installed)  # what installing a wheel does to the files
    bot = tmp_path / "bot"
    for name, text in BOT.items():
        (bot / name).parent.mkdir(parents=True, exist_ok=True)
        (bot / name).write_text(text)
    # -S: not this checkout's editable install; tokenwatch comes from the unpacked wheel, its dependencies from
    # the environment's site-packages, and the bot's folder is first on the path as for any script.
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{installed}:{sysconfig.get_paths()['purelib']}"}
    result = subprocess.run(
        [sys.executable, "-S", "bot.py", stack.env["TOKENWATCH_REDIS_URL"], stack.env["TOKENWATCH_DATABASE_URL"],
         symbol], cwd=bot, env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen == {
        "symbol": symbol, "active": 30, "db": "the bot", "db.engine": "the bot", "cache": "the bot",
        "tasks imported": False, "broker": "memory://the-bot", "beat": {},
        "tokenwatch from": str(installed / "tokenwatch"),
    }
