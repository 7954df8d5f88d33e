"""What the CLI tests share: running ``probe`` in-process, explaining a failure, and the one-line error rule."""

from __future__ import annotations

import traceback

from typer.testing import CliRunner

from probe.cli import app


def invoke(args, env=None):
    """``probe ARGS`` in this process with one thread, every argument as text."""
    runner = CliRunner(env={"OMP_NUM_THREADS": "1", **(env or {})})
    return runner.invoke(app, [str(a) for a in args])


def explain(result) -> str:
    """Output and, for an unexpected exception, its traceback: assertion messages that say what broke."""
    trace = (
        "".join(traceback.format_exception(*result.exc_info))
        if result.exc_info and result.exit_code not in (0, 2, 130)
        else ""
    )
    return f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}\n{trace}"


def assert_user_error(result, *fragments: str) -> str:
    """Exit 2, nothing on stdout, one ``error: …`` line on stderr holding every fragment; returns the line."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]
