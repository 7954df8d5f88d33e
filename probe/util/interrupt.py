"""Stopping a scan cleanly: Ctrl-C and SIGTERM both become KeyboardInterrupt, and the way back in.

Nothing needs saving on the way out: every finished run is already on disk (written atomically by
:mod:`probe.results.store`), and the run in progress is simply done again by the resume.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterator, Sequence


def _raise_interrupt(signum: int, frame) -> None:
    raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")


@contextlib.contextmanager
def graceful_interrupts(signals: Sequence[int] = (signal.SIGTERM,)) -> Iterator[None]:
    """Within the block, ``signals`` (default SIGTERM) raise KeyboardInterrupt in the main thread, as Ctrl-C does.

    A batch scheduler or ``kill`` then stops a scan through the same path as Ctrl-C (``finally`` blocks
    run, temporary files are removed). The previous handlers come back on exit. Outside the main
    thread, where Python cannot install handlers, it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    try:
        for signum in signals:
            previous[signum] = signal.signal(signum, _raise_interrupt)
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


# Options that must not be repeated when resuming: --fresh would throw away the finished runs.
_DROP_ON_RESUME = ("--fresh",)


def resume_hint(argv: Sequence[str] | None = None) -> str:
    """The command line that resumes an interrupted ``probe`` command (``argv`` defaults to ``sys.argv``).

    It is the same command, shell-quoted, without ``--fresh``; ``python -m probe`` stays as it was typed.
    """
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return "probe"
    program = os.path.basename(argv[0])
    if program in ("__main__.py", "-m") or argv[0].endswith(os.path.join("probe", "__main__.py")):
        head = ["python", "-m", "probe"]
    elif program in ("probe", "probe.exe"):
        head = ["probe"]
    else:
        head = [argv[0]]
    args = [a for a in argv[1:] if a not in _DROP_ON_RESUME and not a.startswith("--fresh=")]
    return shlex.join(head + args)
