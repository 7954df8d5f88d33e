"""The ``probe`` command: a thin Typer layer over the API (parse → call probe.api → render).

Commands: ``train`` (a source checkpoint), ``scan`` (λS at every layer), ``layers`` (what can be probed)
and ``report`` (re-render a saved results folder). Results go to stdout (a rich table, or JSON with
``--json`` and nothing else); progress and messages go to stderr. Every user error is one line,
``error: ...``, with exit status 2; an interrupted scan exits with 130 and says how to resume.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperGroup
from typer.exceptions import Exit, TyperException

from .._version import __version__
from ..errors import ProbeError, SettingsError
from ..report.tables import to_json
from ..results.reading import load_folder
from ..results.schema import Measurement
from ..util.allocator import retain_freed_memory

EXIT_USAGE = 2


# ------------------------------------------------------------------------------------ the app


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def fail(message: str) -> None:
    sys.stderr.write(f"error: {_one_line(message)}\n")
    sys.stderr.flush()


class ProbeGroup(TyperGroup):
    """A Typer group whose errors are one line on stderr (``error: ...``, exit 2), never a traceback."""

    # click declares main() with overloads; this override takes the same arguments
    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, **extra: Any) -> Any:  # type: ignore[override]
        argv = list(sys.argv[1:] if args is None else args)
        program = sys.argv[0] if args is None and sys.argv and sys.argv[0] else (prog_name or "probe")
        extra.pop("standalone_mode", None)
        try:
            # obj carries the command line as typed, for the resume hint of an interrupted scan
            code = super().main(
                args=argv,
                prog_name=prog_name or "probe",
                standalone_mode=False,
                obj={"argv": [program, *argv]},
                **extra,
            )
        except TyperException as error:  # click usage errors: unknown option, bad value, missing option
            if type(error).__name__ == "NoArgsIsHelpError":
                sys.stdout.write(error.format_message() + "\n")
                sys.exit(0)
            context = getattr(error, "ctx", None)
            hint = f" (see `{context.command_path} --help`)" if context is not None else ""
            fail(error.format_message() + hint)
            sys.exit(EXIT_USAGE)
        except ProbeError as error:
            fail(str(error) or type(error).__name__)
            sys.exit(EXIT_USAGE)
        except typer.Abort:
            fail("aborted")
            sys.exit(1)
        except BrokenPipeError:  # `probe scan --json | head`: the reader left, nothing to report
            with contextlib.suppress(OSError):
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - so the final flush cannot fail again
            sys.exit(1)
        except OSError as error:  # disk full, permission denied, ...: the environment, not a bug
            where = f" ({error.filename})" if error.filename else ""
            fail(f"{error.strerror or error}{where}")
            sys.exit(EXIT_USAGE)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=ProbeGroup,
    name="probe",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _print_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"{__version__}\n")
        raise Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the quanta-probe version and exit.", callback=_print_version, is_eager=True
        ),
    ] = False,
) -> None:
    """quanta-probe: measure, layer by layer, how transferable a trained network's features are (QUANTA).

    [bold]probe scan[/bold] runs the embedded demo: a paper CNN trained on digits 0-4, probed on digits 5-9.
    """


def main() -> None:
    """Console-script entry point (``probe``)."""
    retain_freed_memory()  # this process is ours: keep freed tensors' memory for the next step
    typer.main.get_command(app).main(prog_name="probe")


# ------------------------------------------------------------------------------- small helpers


def split_values(values: Sequence[str] | None) -> list[str]:
    """Repeatable options that also take comma lists: ``--layers a,b --layers c`` → [a, b, c]."""
    return [item.strip() for value in values or () for item in str(value).split(",") if item.strip()]


def parse_floats(values: Sequence[str] | None, option: str) -> list[float]:
    numbers = []
    for item in split_values(values):
        try:
            numbers.append(float(item))
        except ValueError:
            raise typer.BadParameter(f"{option} takes numbers, e.g. {option} 0.9,0.75,0.5; got '{item}'") from None
    return numbers


def arch_options_of(arch: str, width: float | None) -> dict:
    if width is None:
        return {}
    if arch != "paper-cnn":
        raise typer.BadParameter(f"--width only applies to paper-cnn, not '{arch}'")
    if not width > 0:
        raise SettingsError(f"--width must be a positive number (1.0 is the paper's CNN), got {width}")
    return {"width": width}


def stderr_console(quiet: bool = False) -> Console:
    return Console(file=sys.stderr, quiet=quiet, highlight=False, soft_wrap=True)


def stdout_console() -> Console:
    terminal = sys.stdout.isatty()
    return Console(file=sys.stdout, width=None if terminal else 200, highlight=False, soft_wrap=False)


def write_json(data: Any) -> None:
    sys.stdout.write(to_json(data) + "\n")
    sys.stdout.flush()


def folder_status(folder: Path) -> tuple[Measurement | None, dict]:
    """``(Measurement | None, status dict)`` of a results folder (see probe.results.reading.load_folder)."""
    measurement, status = load_folder(folder)
    return measurement, status.to_dict()


# ------------------------------------------------------------------------------------ options
