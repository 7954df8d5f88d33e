"""Where the package keeps what it caches (trained sources, decoded images) and, by default, its data."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_CACHE_ROOT = "~/.cache/quanta-probe"
DEFAULT_DATA_DIR = f"{DEFAULT_CACHE_ROOT}/data"  # --data-dir when $PROBE_DATA is unset; $PROBE_CACHE does not move it


def cache_root() -> Path:
    """``$PROBE_CACHE`` when set and not empty, else :data:`DEFAULT_CACHE_ROOT`, with ``~`` expanded."""
    return Path(os.environ.get("PROBE_CACHE") or DEFAULT_CACHE_ROOT).expanduser()
