"""Watch child processes; restart one that dies, and give up when one keeps dying."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from tokenwatch.errors import RunRefusedError

log = logging.getLogger("tokenwatch.run")

# A child that dies more than this many times within the window is broken, not unlucky: the run stops.
MAX_RESTARTS = 3
RESTART_WINDOW_S = 60.0


def describe_exit(returncode: int) -> str:
    """'killed by SIGKILL' or 'exit status 1'."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


@dataclass
class Child:
    """One supervised process: how to start it, the running process, and when it died lately."""

    name: str
    start: Callable[[], subprocess.Popen[bytes]]
    hint: str = ""  # where to look when it keeps dying
    process: subprocess.Popen[bytes] | None = None
    deaths: deque[float] = field(default_factory=deque)


class Supervisor:
    """Starts children, restarts the ones that die (each line says so), raises when one keeps dying."""

    def __init__(self, max_restarts: int = MAX_RESTARTS, window_s: float = RESTART_WINDOW_S) -> None:
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.children: dict[str, Child] = {}

    def add(self, name: str, start: Callable[[], subprocess.Popen[bytes]], hint: str = "") -> None:
        """Start a child now and watch it from here on."""
        child = Child(name, start, hint)
        child.process = start()
        self.children[name] = child

    def pids(self) -> dict[str, int]:
        """The running children's pids, by name."""
        return {c.name: c.process.pid for c in self.children.values() if c.process is not None}

    def check(self) -> bool:
        """Restart whichever children died; True when any did. Raises RunRefusedError when one keeps dying."""
        restarted = False
        for child in self.children.values():
            if child.process is None or child.process.poll() is None:
                continue
            how = describe_exit(child.process.returncode)
            now = time.monotonic()
            child.deaths.append(now)
            while child.deaths and now - child.deaths[0] > self.window_s:
                child.deaths.popleft()
            if len(child.deaths) > self.max_restarts:
                hint = f": {child.hint}" if child.hint else ""
                raise RunRefusedError(
                    f"{child.name} died {len(child.deaths)} times within {self.window_s:g} s (last: {how}); "
                    f"giving up{hint}"
                )
            log.warning("%s exited (%s); restarting it (%d of %d restarts allowed in %g s)", child.name, how,
                        len(child.deaths), self.max_restarts, self.window_s)
            child.process = None
            child.process = child.start()
            log.info("%s restarted, pid %d", child.name, child.process.pid)
            restarted = True
        return restarted

    def stop(self, grace_s: float, last: str | None = None) -> None:
        """SIGTERM every child (the one named last after the others are gone), SIGKILL what outlives grace_s."""
        order = [c for c in self.children.values() if c.name != last]
        self._stop([c for c in order if c.process is not None], grace_s)
        if last in self.children:
            self._stop([self.children[last]], grace_s)
        self.children.clear()

    @staticmethod
    def _stop(children: list[Child], grace_s: float) -> None:
        for child in children:
            if child.process is not None and child.process.poll() is None:
                child.process.terminate()
        deadline = time.monotonic() + grace_s
        for child in children:
            process = child.process
            if process is None:
                continue
            try:
                process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", child.name)
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
