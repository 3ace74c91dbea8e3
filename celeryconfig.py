"""Celery settings, each read from the one settings object (tokenwatch.settings) with its reason.

Importable on its own: ``python -m tokenwatch.celeryconfig`` prints the effective configuration, passwords hidden.
"""

from __future__ import annotations

from celery.app.defaults import DEFAULTS
from celery.schedules import crontab

from tokenwatch.cache.redis_client import celery_redis
from tokenwatch.settings import get_settings, redact_url
from tokenwatch.tasks.names import CHECK_ALERTS, DB_OPTIMIZE, DB_VACUUM, PRUNE_SYNC_RUNS, ROUTES, SYNC, Queue
from tokenwatch.workers.beat import LEASE_PREFIX

_settings = get_settings()

# Without TOKENWATCH_REDIS_URL, workers and `celery call` use the embedded server `tokenwatch run` starts. The same
# Redis, one server or a master found through Sentinel, serves everything: cache/redis_client.py builds each part.
_redis = celery_redis(_settings.redis_config())

# https://docs.celeryq.dev/en/stable/userguide/configuration.html#broker-url
broker_url = _redis.broker_url
# The CLI waits on a chain's outcome: results go to the same Redis.
result_backend = _redis.result_backend
if _redis.use_ssl is not None:  # rediss://: the server's certificate is verified (TOKENWATCH_REDIS_CA_CERT)
    broker_use_ssl = redis_backend_use_ssl = redbeat_redis_use_ssl = _redis.use_ssl
# Readable, safe messages: JSON only; pickle is refused on the way in and out.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]
# Which worker consumes which queue: see tasks/names.py.
task_routes = ROUTES
task_default_queue = Queue.FETCH.value
# A task runs at most this long; the soft limit lets it record why it stopped.
task_soft_time_limit = 100
task_time_limit = 120
# Redis redelivers unacknowledged messages after the visibility timeout, even while the first copy runs:
# keep it far above every time limit (https://docs.celeryq.dev/en/stable/getting-started/backends-and-brokers/redis.html#visibility-timeout).
# Through Sentinel the transport options also name the master (master_name).
broker_transport_options = {"visibility_timeout": 3600, **_redis.transport_options}
result_backend_transport_options = {"visibility_timeout": 3600, **_redis.transport_options}
# A write running when the broker connection drops finishes (its transaction commits or rolls back whole); its
# redelivery then finds the sync applied. Celery 6 will cancel such tasks by default; we choose not to.
worker_cancel_long_running_tasks_on_connection_loss = False
# Flower needs task events, including "sent" for beat-sent and manual tasks.
worker_send_task_events = True
task_send_sent_event = True
# One message at a time per process: syncs are few and long relative to the hop.
worker_prefetch_multiplier = 1
# Results are small JSON outcomes; keep a day of them for `celery result` and Flower.
result_expires = 86_400
broker_connection_retry_on_startup = True
timezone = "UTC"
enable_utc = True

# Beat sends one sync per interval; a tick not consumed before the next is dropped, never replayed.
beat_schedule = {
    "sync-contracts": {
        "task": SYNC,
        "schedule": _settings.sync_interval_s,
        "options": {"expires": max(_settings.sync_interval_s * 0.9, 1.0)},
    },
    # Alerts are evaluated every interval; their transitions are logged once (tokenwatch/alerts.py).
    "check-alerts": {
        "task": CHECK_ALERTS,
        "schedule": _settings.sync_interval_s,
        "options": {"expires": max(_settings.sync_interval_s * 0.9, 1.0)},
    },
    # Daily and weekly upkeep on crontab schedules: an interval's countdown restarts with beat, so a beat
    # restarted more often than daily would never run a 24 h interval. A missed run is made up once on start.
    "prune-sync-runs": {
        "task": PRUNE_SYNC_RUNS,
        "schedule": crontab(minute=7, hour=3),
        "options": {"expires": 3600},
    },
    "db-vacuum": {
        "task": DB_VACUUM,
        "schedule": crontab(minute=17, hour=3, day_of_week=0),
        "options": {"expires": 3600},
    },
    "db-optimize": {
        "task": DB_OPTIMIZE,
        "schedule": crontab(minute=27, hour=3),
        "options": {"expires": 3600},
    },
}
# Several nodes may each run a beat: redbeat keeps the schedule in Redis and lets one beat hold a lease-based
# lock; the others wait for it. A holder that dies or is cut off stops renewing, its lease lapses and another
# beat takes over; the schedule (last run times) is shared, so the new holder neither repeats nor skips a tick.
# https://github.com/sibson/redbeat#configuration (workers/beat.py: why not its scheduler as it is)
beat_scheduler = "tokenwatch.workers.beat:LeasedScheduler"
redbeat_redis_url = _redis.redbeat_url
if _redis.redbeat_options:  # Sentinel: redbeat asks the sentinels itself
    redbeat_redis_options = _redis.redbeat_options
redbeat_key_prefix = LEASE_PREFIX
redbeat_lock_timeout = int(_settings.beat_lease_s())
# Beat wakes at least this often, to renew its lease (and, waiting, to try for it).
beat_max_loop_interval = max(int(_settings.beat_lease_s() / 3), 1)

if __name__ == "__main__":
    for name, value in sorted(globals().items()):
        if name in DEFAULTS or name.startswith("redbeat_"):  # Celery's own setting names, and redbeat's
            shown = redact_url(value) if isinstance(value, str) and "://" in value else value
            if isinstance(value, dict) and value.get("password") is not None:
                shown = value | {"password": "***"}
            print(f"{name} = {shown!r}")
