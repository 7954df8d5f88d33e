"""The ``probe`` command line: parses, calls :mod:`probe.api`, renders. No policy lives here.

``app`` (the group, errors as one line), ``options`` (shared options), ``commands``, ``progress`` (live display).
"""

from . import commands  # noqa: F401  (registers the commands on the app)
from .app import app, main
from .progress import LiveProgress

__all__ = ["LiveProgress", "app", "main"]
