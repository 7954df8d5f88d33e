"""The ``probe`` command: a thin Typer layer over the API (parse → call probe.* → render).

Commands: ``train`` (a source checkpoint), ``scan`` (λS at every layer), ``layers`` (what can be probed)
and ``report`` (re-render a saved results folder). Results go to stdout (a rich table, or JSON with
``--json`` and nothing else); progress and messages go to stderr. Every user error is one line,
``error: ...``, with exit status 2; an interrupted scan exits with 130 and says how to resume.
"""

from __future__ import annotations

import contextlib
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, Sequence

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column, Table
from typer.core import TyperGroup
from typer.exceptions import Exit, TyperException

from .settings import DIGITS_DEFAULTS
from . import __version__
from .errors import ProbeError, ResultsError, SettingsError
from .interrupt import graceful_interrupts, resume_hint

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
BASELINE_NAMES = ("yosinski", "logme", "hscore")
# Input shape (C, H, W) of each dataset, so `probe layers` works without the data on disk.
INPUT_SHAPES = {"digits": (1, 8, 8), "cifar10": (3, 32, 32), "cifar100": (3, 32, 32)}
SOURCE_SETTINGS = ("epochs", "batch_size", "lr", "weight_decay", "seed", "augment", "device", "amp", "channels_last")


# ------------------------------------------------------------------------------------ the app


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _fail(message: str) -> None:
    sys.stderr.write(f"error: {_one_line(message)}\n")
    sys.stderr.flush()


class ProbeGroup(TyperGroup):
    """A Typer group whose errors are one line on stderr (``error: ...``, exit 2), never a traceback."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, **extra: Any) -> Any:
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
            _fail(error.format_message() + hint)
            sys.exit(EXIT_USAGE)
        except ProbeError as error:
            _fail(str(error) or type(error).__name__)
            sys.exit(EXIT_USAGE)
        except typer.Abort:
            _fail("aborted")
            sys.exit(1)
        except BrokenPipeError:  # `probe scan --json | head`: the reader left, nothing to report
            with contextlib.suppress(OSError):
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - so the final flush cannot fail again
            sys.exit(1)
        except OSError as error:  # disk full, permission denied, ...: the environment, not a bug
            where = f" ({error.filename})" if error.filename else ""
            _fail(f"{error.strerror or error}{where}")
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
    from .allocator import retain_freed_memory

    retain_freed_memory()  # this process is ours: keep freed tensors' memory for the next step
    typer.main.get_command(app).main(prog_name="probe")


# ------------------------------------------------------------------------------- small helpers


def _split(values: Sequence[str] | None) -> list[str]:
    """Repeatable options that also take comma lists: ``--layers a,b --layers c`` → [a, b, c]."""
    return [item.strip() for value in values or () for item in str(value).split(",") if item.strip()]


def _floats(values: Sequence[str] | None, option: str) -> list[float]:
    numbers = []
    for item in _split(values):
        try:
            numbers.append(float(item))
        except ValueError:
            raise typer.BadParameter(f"{option} takes numbers, e.g. {option} 0.9,0.75,0.5; got '{item}'") from None
    return numbers


def _arch_options(arch: str, width: float | None) -> dict:
    if width is None:
        return {}
    if arch != "paper-cnn":
        raise typer.BadParameter(f"--width only applies to paper-cnn, not '{arch}'")
    if not width > 0:
        raise SettingsError(f"--width must be a positive number (1.0 is the paper's CNN), got {width}")
    return {"width": width}


def _run_settings(data: str, given: dict):
    """ONE RunSettings: the user's options over the defaults of ``data`` (digits: DIGITS_DEFAULTS)."""
    from .data import parse_spec
    from .settings import DIGITS_DEFAULTS, RunSettings

    base = dict(DIGITS_DEFAULTS) if parse_spec(data).name == "digits" else {}
    return RunSettings(**{**base, **{k: v for k, v in given.items() if v is not None}})


def _source_settings(settings):
    """The settings a source is trained with: the scan's training settings, without the gate's."""
    from .settings import RunSettings

    return RunSettings(**{name: getattr(settings, name) for name in SOURCE_SETTINGS})


def _stderr(quiet: bool = False) -> Console:
    return Console(file=sys.stderr, quiet=quiet, highlight=False, soft_wrap=True)


def _stdout() -> Console:
    terminal = sys.stdout.isatty()
    return Console(file=sys.stdout, width=None if terminal else 200, highlight=False, soft_wrap=False)


def _write_json(data: Any) -> None:
    from .report import to_json

    sys.stdout.write(to_json(data) + "\n")
    sys.stdout.flush()


def _status_dict(status) -> dict:
    """A store FolderStatus as plain JSON data: counts, the failed and missing runs, one line of text."""
    return {
        "expected": status.expected,
        "done": status.done,
        "failed": len(status.failed),
        "missing": len(status.missing),
        "corrupt": len(status.corrupt),
        "complete": status.complete,
        "failed_runs": [{"run": key, "reason": reason} for key, reason in status.failed],
        "missing_runs": list(status.missing),
        "description": status.describe(),
    }


def _load_folder(folder: Path):
    """``(Measurement | None, status dict)`` of a results folder (see probe.store.load_folder)."""
    from .store import load_folder

    measurement, status = load_folder(folder)
    return measurement, _status_dict(status)


# ----------------------------------------------------------------------------------- progress


class LiveProgress:
    """A rich progress display on stderr fed by ProgressEvents; silent when stderr is no terminal.

    One bar per phase (training the source, the scan, baselines) in units of epochs, so the ETA covers
    the whole scan; the description shows the latest run, epoch, λS and top-1.
    """

    def __init__(self, enabled: bool, console: Console | None = None) -> None:
        self.enabled = enabled
        self.finished_runs: set[int] = set()
        self._tasks: dict[Any, Any] = {}
        self._done: dict[Any, dict[int, int]] = {}
        self._base: dict[Any, int] = {}
        # Bar, percentage and times first: on a narrow terminal only the description's tail is cut.
        self._progress = Progress(
            SpinnerColumn(),
            BarColumn(bar_width=20),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn(
                "{task.description}", table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis", min_width=10)
            ),
            console=console or Console(file=sys.stderr),
            expand=True,
            transient=True,
            disable=not enabled,
        )

    def __enter__(self) -> "LiveProgress":
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def phase(self, label: str) -> Callable:
        """A progress callback for one phase (``source``, ``scan``)."""
        return lambda event: self._update(label, event)

    def _update(self, phase: str, event) -> None:
        spec = event.spec
        quanta = spec is not None and spec.task in ("AnB", "AnA")  # else a baseline's own training run
        if phase == "scan" and quanta and event.epoch >= event.epochs:
            self.finished_runs.add(event.run_index)
        if not self.enabled:
            return
        key = (phase, quanta, spec is None, event.total_runs, event.epochs)
        total = max(1, event.total_runs) * max(1, event.epochs)
        if key not in self._tasks:
            base = event.run_index if spec is not None else 0
            self._base[key], self._done[key] = base, {}
            self._tasks[key] = self._progress.add_task("", total=total, completed=base * event.epochs)
        self._done[key][event.run_index] = event.epoch
        completed = min(total, self._base[key] * event.epochs + sum(self._done[key].values()))
        metrics = event.metrics or {}
        parts = []
        if spec is None:
            parts.append("training the source" if phase == "source" else phase)
        elif quanta:
            parts.append(f"run {event.run_index + 1}/{event.total_runs}")
            parts.append(f"{spec.task} [bold]{escape(spec.layer)}[/bold] init {spec.init:g} seed {spec.seed}")
        else:  # baselines report their own runs (e.g. Yosinski transfers) with their task as label
            parts.append(f"baseline run {event.run_index + 1}/{event.total_runs}")
            parts.append(f"{escape(spec.task)} [bold]{escape(spec.layer)}[/bold] seed {spec.seed}")
        parts.append(f"epoch {event.epoch}/{event.epochs}")
        if "lambda_source" in metrics:
            parts.append(f"λS [cyan]{metrics['lambda_source']:.3f}[/cyan]")
        if "top1" in metrics:
            parts.append(f"top-1 {metrics['top1']:.3f}")
        self._progress.update(self._tasks[key], completed=completed, description=" · ".join(parts))


def _progress(quiet: bool) -> LiveProgress:
    return LiveProgress(enabled=not quiet and sys.stderr.isatty())


# ------------------------------------------------------------------------------------ options


class Backend(str, Enum):
    local = "local"
    ray = "ray"


ArchOption = Annotated[
    Optional[str],
    typer.Option(
        "--arch",
        help="Architecture: paper-cnn, a timm name (resnet18) or tv:NAME for torchvision. \\[default: paper-cnn, or the checkpoint's]",
    ),
]
EpochsOption = Annotated[
    Optional[int],
    typer.Option("--epochs", help=f"Training epochs. \\[default: 60; digits: {DIGITS_DEFAULTS['epochs']}]"),
]
BatchOption = Annotated[Optional[int], typer.Option("--batch-size", help="Mini-batch size. \\[default: 32]")]
LrOption = Annotated[
    Optional[float],
    typer.Option("--lr", help=f"Adam learning rate. \\[default: 1e-4; digits: {DIGITS_DEFAULTS['lr']:g}]"),
]
SeedOption = Annotated[
    Optional[int], typer.Option("--seed", help="Seed of the first run (run k uses seed+k). \\[default: 0]")
]
DeviceOption = Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda or cuda:N. \\[default: auto]")]
DataDirOption = Annotated[
    Optional[Path],
    typer.Option(
        "--data-dir", help="Folder with the CIFAR data. \\[default: $PROBE_DATA or ~/.cache/quanta-probe/data]"
    ),
]
DownloadOption = Annotated[bool, typer.Option("--download", help="Download CIFAR-10/100 into --data-dir when missing.")]
WidthOption = Annotated[
    Optional[float], typer.Option("--width", help="paper-cnn only: scale every layer's width (1.0 = the paper's CNN).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout and nothing else.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display and no messages on stderr.")]
NoAugmentOption = Annotated[bool, typer.Option("--no-augment", help="Train without data augmentation.")]


# ---------------------------------------------------------------------------------- commands


@app.command()
def train(
    out: Annotated[Path, typer.Option("--out", help="Where to write the checkpoint (.pt).")],
    arch: ArchOption = None,
    data: Annotated[str, typer.Option("--data", help="The source task, e.g. digits[0-4], cifar10.")] = "digits[0-4]",
    epochs: EpochsOption = None,
    batch_size: BatchOption = None,
    lr: LrOption = None,
    seed: SeedOption = None,
    device: DeviceOption = None,
    data_dir: DataDirOption = None,
    download: DownloadOption = False,
    width: WidthOption = None,
    no_augment: NoAugmentOption = False,
    quiet: QuietOption = False,
) -> None:
    """Train a source model and save it as a checkpoint that records its task and settings.

    Example: [bold]probe train --arch paper-cnn --data cifar10 --out cifar10.pt --download[/bold]
    """
    import probe

    from .checkpoint import source_info
    from .data import load_task

    arch = arch or "paper-cnn"
    options = _arch_options(arch, width)
    given = dict(
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device, augment=False if no_augment else None
    )
    settings = _source_settings(_run_settings(data, given))
    if out.is_dir():
        raise ResultsError(f"--out '{out}' is a folder; give a file name such as {out / 'source.pt'}")
    _check_writable(out.parent)
    if download:
        load_task(data, data_dir=data_dir, download=True)
    err = _stderr(quiet)
    err.print(
        escape(
            f"training {arch} on {data} for {settings.epochs} epochs (lr {settings.lr:g}, batch {settings.batch_size})"
        )
    )
    with _progress(quiet) as live:
        model = probe.train_source(
            arch,
            data,
            settings=settings,
            out=out,
            arch_options=options,
            data_dir=data_dir,
            progress=live.phase("source"),
        )
    info = source_info(model)
    _stdout().print(
        f"source test top-1 [bold]{info.test_top1:.4f}[/bold] " + escape(f"({arch} on {info.dataset}) → {out}")
    )


@app.command()
def scan(
    ctx: typer.Context,
    arch: ArchOption = None,
    source: Annotated[
        Optional[Path],
        typer.Option(
            "--source",
            help="Source checkpoint (probe train output, a state_dict or .safetensors). \\[default: train one, cached]",
        ),
    ] = None,
    target: Annotated[
        Optional[str],
        typer.Option(
            "--target",
            help="Target task, e.g. digits[5-9], cifar100. \\[default: the source's pairing: digits[0-4] → digits[5-9], cifar10 → cifar100]",
        ),
    ] = None,
    source_data: Annotated[
        Optional[str],
        typer.Option(
            "--source-data",
            help="The source's own task (for AnA and plain state_dicts). \\[default: the checkpoint's record, else digits[0-4]]",
        ),
    ] = None,
    layers: Annotated[
        Optional[list[str]],
        typer.Option(
            "--layers",
            help="Layers to probe: names or glob patterns, repeatable or comma-separated (conv1,fc or 'conv*'). \\[default: every probeable layer]",
        ),
    ] = None,
    init: Annotated[
        Optional[list[str]],
        typer.Option(
            "--init",
            help="Initial λS, repeatable or comma-separated; each value is a separate series (the paper: 0.9,0.75,0.5). \\[default: 0.9]",
        ),
    ] = None,
    runs: Annotated[
        Optional[int],
        typer.Option("--runs", help="Runs (seeds) per layer and init; the table shows mean ± std. \\[default: 1]"),
    ] = None,
    epochs: EpochsOption = None,
    batch_size: BatchOption = None,
    lr: LrOption = None,
    gate_lr: Annotated[
        Optional[float],
        typer.Option(
            "--gate-lr",
            help=f"Learning rate of the gate (vS, vT): λS can move about gate_lr × steps. \\[default: = --lr; digits: {DIGITS_DEFAULTS['gate_lr']:g}]",
        ),
    ] = None,
    seed: SeedOption = None,
    device: DeviceOption = None,
    data_dir: DataDirOption = None,
    download: DownloadOption = False,
    control: Annotated[
        bool, typer.Option("--control", help="Also run the AnA control (target task = the source's task).")
    ] = False,
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            help="Results folder: results.json, results.csv, one file per run, transferability.png, dynamics.png. Re-running resumes.",
        ),
    ] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Discard the runs already in --out and start over.")] = False,
    jobs: Annotated[
        Optional[int],
        typer.Option(
            "--jobs",
            help="Runs trained in parallel by the local backend (worker processes). \\[default: one per CPU core; 1 on a GPU]",
        ),
    ] = None,
    no_augment: NoAugmentOption = False,
    baselines: Annotated[
        Optional[list[str]],
        typer.Option("--baselines", help="Also compute baselines per layer, comma-separated: yosinski, logme, hscore."),
    ] = None,
    backend: Annotated[
        Backend, typer.Option("--backend", help="Where runs execute: local (this machine) or ray (a Ray cluster).")
    ] = Backend.local,
    address: Annotated[
        Optional[str],
        typer.Option(
            "--address",
            help="ray: address of the cluster (e.g. ray://head:10001). \\[default: start or join a local one]",
        ),
    ] = None,
    gpus_per_run: Annotated[
        Optional[float], typer.Option("--gpus-per-run", help="ray: GPUs reserved by each run (fractions share a GPU).")
    ] = None,
    cpus_per_run: Annotated[
        Optional[int],
        typer.Option("--cpus-per-run", help="ray: CPUs reserved by each run (also its torch threads). \\[default: 1]"),
    ] = None,
    width: WidthOption = None,
    pretrained: Annotated[
        bool, typer.Option("--pretrained", help="Use the timm/torchvision pretrained weights of --arch as the source.")
    ] = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Measure λS, how much of each layer of a frozen source transfers to a target task.

    Without options: the embedded demo (a paper CNN trained on digits 0-4, cached; target digits 5-9).

    Examples: [bold]probe scan --epochs 12 --runs 3 --out results/digits[/bold];
    [bold]probe scan --arch paper-cnn --source cifar10.pt --target cifar100 --init 0.9,0.75,0.5 --control --out results/cifar[/bold]
    """
    import probe

    from .checkpoint import source_info
    from .data import default_target, load_task, parse_spec

    # 1. Everything that can be checked without training is checked first: nothing is written on error.
    if source is not None and pretrained:
        raise typer.BadParameter("give either --source CHECKPOINT or --pretrained, not both")
    layer_patterns = _split(layers) or None
    inits = _floats(init, "--init")
    baseline_names = _split(baselines)
    unknown = [name for name in baseline_names if name not in BASELINE_NAMES]
    if unknown:
        raise typer.BadParameter(f"unknown baseline '{unknown[0]}': choose from {', '.join(BASELINE_NAMES)}")
    backend_options = {
        k: v
        for k, v in dict(address=address, gpus_per_run=gpus_per_run, cpus_per_run=cpus_per_run).items()
        if v is not None
    }
    if backend_options and backend is not Backend.ray:
        raise typer.BadParameter(f"--{next(iter(backend_options)).replace('_', '-')} needs --backend ray")
    options = _arch_options(arch or "paper-cnn", width)
    if source_data is not None:
        parse_spec(source_data)
    if target is not None:
        parse_spec(target)
    given = dict(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        gate_lr=gate_lr,
        runs=runs,
        seed=seed,
        device=device,
        jobs=jobs,
        init=tuple(inits) if inits else None,
        augment=False if no_augment else None,
    )
    _run_settings(target or source_data or "digits", given)  # bad numbers fail now, before any loading
    if out is not None:
        _check_writable(out)
    err = _stderr(quiet)
    fetched: set[str] = set()

    def fetch(spec: str | None) -> None:
        """--download: fetch a dataset before it is first needed."""
        if download and spec is not None and spec not in fetched:
            load_task(spec, data_dir=data_dir, download=True)
            fetched.add(spec)

    # 2. The source: a checkpoint, pretrained weights, or trained here (cached).
    model = None
    if source is not None:
        model = probe.load_source(source, arch=arch, data=source_data, data_dir=data_dir, **options)
        recorded = source_info(model).dataset
        if (
            source_data is not None
            and recorded is not None
            and str(parse_spec(recorded)) != str(parse_spec(source_data))
        ):
            raise SettingsError(f"'{source}' records source task {recorded}, not {source_data}; drop --source-data")
        source_data = recorded or source_data
    elif pretrained:
        if arch is None:
            raise typer.BadParameter("--pretrained needs --arch, e.g. --arch resnet18 or --arch tv:resnet18")
        if target is None:
            raise SettingsError(
                "pretrained weights record no task of this toolkit, so there is no default target: give --target (e.g. cifar10)"
            )
        fetch(target)
        model = _pretrained(arch, target, data_dir, options)
    else:
        source_data = source_data or "digits[0-4]"
    if target is None:
        if source_data is None:
            raise SettingsError(
                "this source records no task, so there is no default target: give --target (e.g. cifar10)"
            )
        target = str(default_target(source_data))

    # 3. One RunSettings for every run (digits defaults for digits, the paper's otherwise).
    settings = _run_settings(target, given)
    if jobs is None:
        from .parallel import default_jobs

        settings = settings.with_(jobs=default_jobs(device=settings.device))

    fetch(target)
    fetch(source_data)

    argv = (ctx.obj or {}).get("argv", [])
    with _progress(quiet) as live:
        try:
            with graceful_interrupts():  # SIGTERM stops the scan like Ctrl-C
                if model is None:
                    model = _train_or_reuse(arch or "paper-cnn", source_data, settings, options, data_dir, live, err)
                measurement = probe.scan(
                    model,
                    layer_patterns,
                    target,
                    settings=settings,
                    control=control,
                    source_data=source_data,
                    data_dir=data_dir,
                    progress=live.phase("scan"),
                    out=out,
                    fresh=fresh,
                    backend=backend.value,
                    backend_options=backend_options or None,
                    baselines=baseline_names,
                )
        except KeyboardInterrupt:
            live.__exit__(None, None, None)
            _interrupted(out, argv, len(live.finished_runs))
            raise Exit(EXIT_INTERRUPTED) from None

    _render(measurement, out, json_output, err)


def _check_writable(out: Path) -> None:
    """Fail before any long work when the folder ``out`` cannot be written, without creating anything yet."""
    if out.exists() and not out.is_dir():
        raise ResultsError(f"'{out}' is a file; give a folder")
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ResultsError(
            f"cannot write results to '{out}': '{existing}' is not a writable folder; pick another --out"
        )


def _pretrained(arch: str, data: str, data_dir: Path | None, options: dict):
    try:
        from .sources import pretrained_source
    except ImportError:
        raise ProbeError(
            "--pretrained needs probe.sources.pretrained_source, which this installation lacks; "
            "give a checkpoint with --source instead"
        ) from None
    return pretrained_source(arch, data, data_dir=data_dir, **options)


def _train_or_reuse(arch: str, data: str, settings, options: dict, data_dir, live: LiveProgress, err: Console):
    from .api import cached_source
    from .checkpoint import source_info

    source_settings = _source_settings(settings)
    model, reused = cached_source(
        arch,
        data,
        settings=source_settings,
        arch_options=options or None,
        data_dir=data_dir,
        progress=live.phase("source"),
    )
    info = source_info(model)
    verb = "reused the cached" if reused else "trained a"
    where = f" ({info.checkpoint})" if info.checkpoint else ""
    err.print(escape(f"source: {verb} {arch} on {info.dataset}, test top-1 {info.test_top1:.3f}{where}"))
    return model


def _interrupted(out: Path | None, argv: list[str], finished: int) -> None:
    if out is None:
        sys.stderr.write("interrupted: no results saved (give --out DIR to keep finished runs and resume)\n")
        return
    saved = finished  # the progress callback's count, unless the folder says better
    with contextlib.suppress(ProbeError, OSError):
        _, status = _load_folder(out)
        saved = status["done"] + status["failed"]
    sys.stderr.write(
        f"interrupted: {saved} run{'' if saved == 1 else 's'} saved in {out}; resume with: {resume_hint(argv)}\n"
    )


def _print_tables(measurement) -> None:
    """The results table, and the rank correlations with the baselines when there are any, on stdout."""
    from .report import correlations_table, results_table

    console = _stdout()
    console.print(results_table(measurement))
    correlations = correlations_table(measurement)
    if correlations is not None:
        console.print(correlations)


def _render(measurement, out: Path | None, json_output: bool, err: Console) -> None:
    """The results table (or JSON) on stdout; the figures in ``out``."""
    from .report import write_figures

    if json_output:
        _write_json(measurement.to_dict())
    else:
        _print_tables(measurement)
    if out is None:
        return
    try:
        figures = write_figures(measurement, out)
    except Exception as error:  # the results are saved already; say so rather than lose them in a traceback
        _fail(
            f"could not draw the figures ({type(error).__name__}: {error}); the results are saved: redraw with probe report {out}"
        )
        raise Exit(1) from None
    err.print(escape(f"saved in {out}: results.json, results.csv, " + ", ".join(path.name for path in figures)))


@app.command()
def layers(
    arch: ArchOption = None,
    source: Annotated[
        Optional[Path], typer.Option("--source", help="List the layers of this checkpoint's model.")
    ] = None,
    data: Annotated[
        Optional[str],
        typer.Option(
            "--data",
            help="Dataset whose input size the shapes are for, e.g. digits (1×8×8), cifar10 (3×32×32); a checkpoint's own record wins. \\[default: digits]",
        ),
    ] = None,
    width: WidthOption = None,
    json_output: JsonOption = False,
) -> None:
    """List the probeable layers in forward order with their output shapes; mark the ones scan probes by default.

    Example: [bold]probe layers --arch resnet18 --data cifar10[/bold]
    """
    from .adapters import create_model
    from .checkpoint import source_info
    from .data import parse_spec

    options = _arch_options(arch or "paper-cnn", width)
    if source is not None:
        import probe

        model = probe.load_source(source, arch=arch, data=data, **options)
        info = source_info(model)
        arch_name = info.arch or arch or type(model).__name__
        if info.in_chans is not None and info.input_size is not None:  # the format the source was built for
            shape, data = (info.in_chans, *info.input_size), info.dataset or data
        else:
            shape = _input_shape(data or "digits")
    else:
        arch_name = arch or "paper-cnn"
        spec = parse_spec(data or "digits")
        data = str(spec)
        shape = _input_shape(data)
        model = create_model(
            arch_name, num_classes=spec.num_classes, in_chans=shape[0], input_size=shape[1:], **options
        )
    from .layers import layer_table

    rows = [
        {
            "name": layer.name,
            "kind": layer.kind,
            "shape": list(layer.shape) if layer.shape is not None else None,
            "default": bool(layer.default),
            "module_type": layer.module_type,
            "activation": getattr(layer, "activation", ""),
        }
        for layer in layer_table(model, tuple(shape), arch=arch_name if source is None else None)
    ]
    if json_output:
        _write_json({"arch": arch_name, "data": data, "input_shape": list(shape), "layers": rows})
        return
    table = Table(
        title=escape(f"probeable layers of {arch_name} for {'×'.join(map(str, shape))} inputs ({data})"),
        caption=f"{sum(r['default'] for r in rows)} of {len(rows)} probed by default (✓); pick others with probe scan --layers NAME",
        header_style="bold",
    )
    for name, justify in (
        ("#", "right"),
        ("layer", "left"),
        ("kind", "left"),
        ("module", "left"),
        ("output shape", "left"),
        ("default", "center"),
    ):
        table.add_column(name, justify=justify)
    for index, row in enumerate(rows, start=1):
        shape_text = "×".join(map(str, row["shape"])) if row["shape"] else "—"
        cells = (
            str(index),
            row["name"],
            str(row["kind"]),
            str(row["module_type"]),
            shape_text,
            "✓" if row["default"] else "",
        )
        table.add_row(*map(escape, cells))
    _stdout().print(table)


def _input_shape(data: str) -> tuple[int, ...]:
    from .data import load_task, parse_spec

    name = parse_spec(data).name
    if name in INPUT_SHAPES:
        return INPUT_SHAPES[name]
    task = load_task(data)
    return (task.in_chans, *task.input_size)


@app.command()
def report(
    folder: Annotated[
        Path,
        typer.Argument(help="A results folder written by probe scan --out (or its results.json).", show_default=False),
    ],
    json_output: JsonOption = False,
    no_figures: Annotated[
        bool, typer.Option("--no-figures", help="Only print; do not redraw the PNG figures.")
    ] = False,
) -> None:
    """Re-render the table and the figures of a saved results folder, without training.

    A partial folder (an interrupted scan) is rendered as far as it goes, and report says how many runs are missing.
    Example: [bold]probe report results/digits[/bold]
    """
    from .report import write_figures

    measurement, status = _load_folder(folder)
    if measurement is None:
        raise ResultsError(
            f"'{folder}' holds no finished run yet ({status['description']}); run probe scan --out {folder}"
        )
    if json_output:
        _write_json({"folder": str(folder), "status": status, "results": measurement.to_dict()})
    else:
        _print_tables(measurement)
    err = _stderr()
    if status["missing"] or status["corrupt"]:
        err.print(escape(f"partial results: {status['description']}"))
    else:
        err.print(escape(status["description"]))
    if not no_figures:
        where = folder if folder.is_dir() else folder.parent  # report also takes a results.json itself
        figures = write_figures(measurement, where)
        err.print(escape(f"redrew {', '.join(path.name for path in figures)} in {where}"))
