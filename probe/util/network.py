"""Whether a download can work: the Hugging Face offline switches and a quick reachability check."""

from __future__ import annotations

import os
import socket
import threading

_TRUE = ("1", "true", "yes", "on")


def env_flag(*names: str) -> bool:
    """Whether any of the environment variables ``names`` is switched on (1/true/yes/on), read at call time."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in names)


def reachable(host: str, timeout: float = 3.0, port: int = 443) -> bool:
    """Whether ``host``:``port`` accepts a connection within ``timeout`` seconds (name lookup included).

    The attempt runs in a daemon thread, so a name lookup that hangs cannot hold the caller past ``timeout``.
    """
    result: list[bool] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])
