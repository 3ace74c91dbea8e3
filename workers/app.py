"""The Celery app, and nothing else: settings come from celeryconfig, tasks from tasks/."""

from __future__ import annotations

import gc
import logging
import re
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

from celery import Celery, signals
from celery.app.trace import LOG_SUCCESS
from celery.exceptions import CPendingDeprecationWarning

from tokenwatch import prepare, process, worker_memory
from tokenwatch.errors import ConfigError
from tokenwatch.lifeline import die_with_parent
from tokenwatch.settings import get_settings


def _quiet_the_deliberate_default(**_: Any) -> None:
    """On every lost broker connection Celery warns, in seven lines, of a default celeryconfig sets on purpose."""
    warnings.filterwarnings("ignore", message="\nIn Celery 5.1 we introduced", category=CPendingDeprecationWarning)


_quiet_the_deliberate_default()
# A worker's logging setup puts Celery's own "always" filters first: ours goes back in front once it is ready.
signals.worker_ready.connect(_quiet_the_deliberate_default, weak=False)



def _settings_or_exit() -> None:
    """Under Celery's own command line, a bad TOKENWATCH_* value is one line and exit 78, not Celery's traceback."""
    try:
        get_settings()
    except ConfigError as exc:
        program = Path(sys.argv[0]).name if sys.argv else ""
        if program not in ("celery", "__main__.py"):
            raise  # imported by a program of its own: let it report the error its way
        print(f"tokenwatch: {exc}", file=sys.stderr)
        raise SystemExit(78) from None  # sysexits' EX_CONFIG, as the tokenwatch command exits


_settings_or_exit()
app = Celery("tokenwatch", include=["tokenwatch.tasks.sync", "tokenwatch.tasks.maintenance"])
app.config_from_object("tokenwatch.celeryconfig")


def _freeze_imports(**_: Any) -> None:
    """Keep what a pool process inherits (modules, the app) out of the cyclic collector's passes."""
    # Otherwise a full collection walks every inherited object inside whichever sync triggered it.
    gc.freeze()


signals.worker_process_init.connect(_freeze_imports)


def _die_with_the_worker(**_: Any) -> None:
    """A pool process whose worker was killed outright has nobody to report to: it goes too, not on as an orphan."""
    die_with_parent(signal.SIGKILL)


signals.worker_process_init.connect(_die_with_the_worker)


_SYNC_ID = re.compile(r"'sync_id': '([^']{1,80})'")
_STATUS = re.compile(r"'status': '([a-z]{1,20})'")
_LONGEST_RESULT = 120


class ShortResults(logging.Filter):
    """Celery's "Task ... succeeded in 0.01s: {...}" shows a step's whole state (counts, timings, symbols) at
    INFO, drowning the PERFORMANCE line: name only the sync and its status (or a short result)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != LOG_SUCCESS or not isinstance(record.args, dict):
            return True
        result = str(record.args.get("return_value", ""))
        sync_id, status = _SYNC_ID.search(result), _STATUS.search(result)
        if sync_id is not None:
            short = f"sync {sync_id.group(1)}" + (f" {status.group(1)}" if status is not None else "")
        elif len(result) > _LONGEST_RESULT:
            short = result[:_LONGEST_RESULT] + "..."
        else:
            return True
        record.args = {**record.args, "return_value": short}
        return True


# Celery's tracer logs each task's end on this logger, in every pool process; a logger's filter goes wherever
# the worker sends its log.
logging.getLogger("celery.app.trace").addFilter(ShortResults())


def _prepare_for_syncs(**_: Any) -> None:
    """Open the registry and compile the write statements now, not inside this process's first sync."""
    prepare.prepare(get_settings(), process.current())


signals.worker_process_init.connect(_prepare_for_syncs)


def _withdraw_report(**_: Any) -> None:
    """A pool process that stops takes its memory report with it: status and the other processes (which share
    their registry only while another may diff next, steps._others_may_diff) stop counting it at once."""
    worker_memory.forget(get_settings(), process.current())


signals.worker_process_shutdown.connect(_withdraw_report)
