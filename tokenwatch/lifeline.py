"""Children die with the process that started them: Linux's parent-death signal, set before exec.

`tokenwatch run` starts each child as ``python -m tokenwatch.lifeline PARENT_PID SIGNAL -- argv...``: this sets
PR_SET_PDEATHSIG (kept across exec) and then becomes the child. A SIGKILLed run thus takes its Redis, worker, beat
and Flower with it, which nothing in the run's own code could do. Done in a wrapper rather than a Popen
``preexec_fn``, which is unsafe in a process that has threads (the run serves /metrics from one).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Sequence

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> bool:
    """Ask the kernel to send sig to this process when its parent exits; False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    return bool(libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0)


def wrap(argv: Sequence[str], sig: signal.Signals = signal.SIGTERM) -> list[str]:
    """argv, run so that it receives sig when this process dies."""
    return [sys.executable, "-m", "tokenwatch.lifeline", str(os.getpid()), sig.name, "--", *argv]


def main(args: Sequence[str]) -> None:
    """PARENT_PID SIGNAL -- argv...: set the parent-death signal, then exec argv."""
    parent, name, separator, *argv = args
    if separator != "--" or not argv:
        sys.exit("usage: python -m tokenwatch.lifeline PARENT_PID SIGNAL -- COMMAND...")
    die_with_parent(signal.Signals[name])
    # The parent may have died before the signal was armed: then nobody would send it.
    if os.getppid() != int(parent):
        sys.exit(0)
    os.execvp(argv[0], argv)  # noqa: S606 - argv is the run's own command, never a shell string


if __name__ == "__main__":
    main(sys.argv[1:])
