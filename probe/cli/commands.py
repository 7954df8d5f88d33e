"""The commands: ``train``, ``scan``, ``layers`` and ``report``. Each parses, calls :mod:`probe.api`, renders."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console, JustifyMethod
from rich.markup import escape
from rich.table import Table
from typer.exceptions import Exit

from .. import api
from ..api.listing import DEFAULT_DATA as LISTING_DEFAULT_DATA
from ..errors import ProbeError, ResultsError
from ..models.checkpoint import recorded_info
from ..report.figures import write_figures
from ..report.tables import correlations_table, quality_line, results_table
from ..results.assessment import results_document
from ..results.decision import recommend, recommendation_line
from ..settings import DEFAULT_ARCH, DEFAULT_SOURCE_DATA
from ..util.interrupt import graceful_interrupts, resume_hint
from .app import (
    app,
    arch_options_of,
    fail,
    folder_status,
    parse_floats,
    split_values,
    stderr_console,
    stdout_console,
    write_json,
)
from .options import (
    AddressOption,
    ArchOption,
    AugmentOption,
    Backend,
    BackendOption,
    BaselinesOption,
    BatchOption,
    ControlOption,
    CpusPerRunOption,
    DataDirOption,
    DeviceOption,
    DownloadOption,
    EpochsOption,
    FreshOption,
    GateBudgetOption,
    GateLrMaxOption,
    GateLrOption,
    GateOptimizerOption,
    GpusPerRunOption,
    ImageColumnOption,
    ImageSizeOption,
    InitOption,
    JobsOption,
    JsonOption,
    LabelColumnOption,
    LayersOption,
    LrOption,
    LrScheduleOption,
    OutOption,
    PresetOption,
    PretrainedOption,
    QuietOption,
    RunsOption,
    SeedOption,
    SourceAugmentOption,
    SourceDataOption,
    SourceEpochsOption,
    SourceLrOption,
    SourceOption,
    TargetOption,
    TrainSizeOption,
    WidthOption,
)
from .progress import LiveProgress, live_progress

EXIT_INTERRUPTED = 130


@app.command()
def train(
    out: Annotated[Path, typer.Option("--out", help="Where to write the checkpoint (.pt).")],
    arch: ArchOption = None,
    data: Annotated[
        str, typer.Option("--data", help="The source task, e.g. digits[0-4], cifar10, fashion[0-4].")
    ] = DEFAULT_SOURCE_DATA,
    epochs: SourceEpochsOption = None,
    batch_size: BatchOption = None,
    lr: SourceLrOption = None,
    train_size: TrainSizeOption = None,
    seed: SeedOption = None,
    device: DeviceOption = None,
    data_dir: DataDirOption = None,
    download: DownloadOption = False,
    image_size: ImageSizeOption = None,
    image_column: ImageColumnOption = None,
    label_column: LabelColumnOption = None,
    width: WidthOption = None,
    augment: SourceAugmentOption = None,
    preset: PresetOption = None,
    quiet: QuietOption = False,
) -> None:
    """Train a source model and save it as a checkpoint that records its task and settings.

    Example: [bold]probe train --arch paper-cnn --data cifar10 --out cifar10.pt --download[/bold]
    """
    options = arch_options_of(arch or DEFAULT_ARCH, width)
    given = dict(
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device, augment=augment, train_size=train_size
    )
    settings = api.source_training_settings(data, preset=preset, **given)
    preprocess, _ = api.preprocessing_for(
        data, image_size=image_size, image_column=image_column, label_column=label_column
    )
    api.check_checkpoint_path(out)
    api.check_request(source_data=data, data_dir=data_dir, download=download)
    err = stderr_console(quiet)
    plan = f"{settings.epochs} epochs (lr {settings.lr:g}, batch {settings.batch_size})"
    err.print(escape(f"training {arch or DEFAULT_ARCH} on {data} for {plan}"))
    with live_progress(quiet) as live:
        model = api.train_source(
            arch or DEFAULT_ARCH, data, settings=settings, out=out, arch_options=options, data_dir=data_dir,
            download=download, progress=live.phase("source"), preprocess=preprocess,
        )  # fmt: skip
    info = recorded_info(model)
    summary = escape(f"({info.arch} on {info.dataset}) → {out}")
    stdout_console().print(f"source test top-1 [bold]{info.test_top1:.4f}[/bold] {summary}")


@app.command()
def scan(
    ctx: typer.Context,
    arch: ArchOption = None,
    source: SourceOption = None,
    target: TargetOption = None,
    source_data: SourceDataOption = None,
    layers: LayersOption = None,
    init: InitOption = None,
    runs: RunsOption = None,
    epochs: EpochsOption = None,
    batch_size: BatchOption = None,
    lr: LrOption = None,
    gate_lr: GateLrOption = None,
    gate_budget: GateBudgetOption = None,
    gate_lr_max: GateLrMaxOption = None,
    gate_optimizer: GateOptimizerOption = None,
    lr_schedule: LrScheduleOption = None,
    preset: PresetOption = None,
    train_size: TrainSizeOption = None,
    seed: SeedOption = None,
    device: DeviceOption = None,
    data_dir: DataDirOption = None,
    download: DownloadOption = False,
    control: ControlOption = False,
    out: OutOption = None,
    fresh: FreshOption = False,
    jobs: JobsOption = None,
    augment: AugmentOption = None,
    baselines: BaselinesOption = None,
    backend: BackendOption = Backend.local,
    address: AddressOption = None,
    gpus_per_run: GpusPerRunOption = None,
    cpus_per_run: CpusPerRunOption = None,
    width: WidthOption = None,
    pretrained: PretrainedOption = False,
    image_size: ImageSizeOption = None,
    image_column: ImageColumnOption = None,
    label_column: LabelColumnOption = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print the plan (source, target, layers, runs, steps per run, estimated time on this machine) and "
            "exit without training.",
        ),
    ] = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Measure λS, how much of each layer of a frozen source transfers to a target task.

    Without options: the embedded demo (a paper CNN trained on digits 0-4, cached; target digits 5-9).

    Examples: [bold]probe scan --epochs 12 --runs 3 --out results/digits[/bold];
    [bold]probe scan --arch paper-cnn --source cifar10.pt --target cifar100 --init 0.9,0.75,0.5 --control
    --out results/cifar[/bold]
    """
    given = dict(
        epochs=epochs, batch_size=batch_size, lr=lr, gate_lr=gate_lr, gate_budget=gate_budget,
        gate_lr_max=gate_lr_max, gate_optimizer=gate_optimizer, lr_schedule=lr_schedule, runs=runs, seed=seed,
        device=device, jobs=jobs,
        init=tuple(inits) if (inits := parse_floats(init, "--init")) else None, augment=augment,
        train_size=train_size,
    )  # fmt: skip
    backend_options = {
        k: v
        for k, v in dict(address=address, gpus_per_run=gpus_per_run, cpus_per_run=cpus_per_run).items()
        if v is not None
    }
    request = api.ScanRequest(
        source=source, target=target, layers=_layer_list(layers), arch=arch, pretrained=pretrained,
        arch_options=arch_options_of(arch or DEFAULT_ARCH, width), source_data=source_data, control=control,
        baselines=split_values(baselines), preset=preset, overrides=given, out=out, fresh=fresh,
        backend=backend.value, backend_options=backend_options or None, data_dir=data_dir, download=download,
        image_size=image_size, image_column=image_column, label_column=label_column,
    )  # fmt: skip
    plan = api.plan_scan(request)
    err = stderr_console(quiet)
    estimate = api.estimate_duration(plan)
    if dry_run:
        _render_plan(plan, estimate, json_output)
        return
    err.print(escape(f"estimated time: {estimate.describe()}"))
    with live_progress(quiet, estimate=estimate.seconds - estimate.source_seconds) as live:
        try:
            with graceful_interrupts():  # SIGTERM stops the scan like Ctrl-C
                model = _source(plan, live, err)
                measurement = api.run(plan, progress=live.phase("scan"), source=model)
        except KeyboardInterrupt:
            live.__exit__(None, None, None)
            _interrupted(out, (ctx.obj or {}).get("argv", []), len(live.finished_runs))
            raise Exit(EXIT_INTERRUPTED) from None
    _render(measurement, out, json_output, err)


def _print_data_lines(measurement) -> None:
    """Under the table: how images from anywhere were prepared, which of their classes were used, the files
    skipped, and the notes of the request (one line each)."""
    console = stdout_console()
    extras = measurement.extras
    applied = (extras.get("preprocessing") or {}).get("applied")
    if applied:
        console.print(escape(f"images: {applied}"))
    for task, meta in (extras.get("data") or {}).items():
        names = (extras.get("class_names") or {}).get(task)
        if names:  # a subset of images from anywhere indexes classes by their sorted names: say which they are
            console.print(escape(f"classes: {task} {extras['tasks'][task]} = {', '.join(names)}"))
        skipped = (meta.get("skipped") or {}).get("files") or []
        if skipped:
            shown = "; ".join(f"{item['item']} ({item['reason']})" for item in skipped[:3])
            more = f"; and {len(skipped) - 3} more" if len(skipped) > 3 else ""
            console.print(escape(f"skipped: {task} {len(skipped)} file(s): {shown}{more} (all in results.json)"))
    for note in extras.get("notes", []):
        console.print(escape(f"note: {note}"))


def _layer_list(values: Sequence[str] | None) -> list[str] | None:
    """--layers as a list: None when not given; [] (an error below) when given but empty, e.g. --layers ''."""
    return None if values is None else split_values(values)


def _source(plan: api.ScanPlan, live: LiveProgress, err: Console):
    """The plan's source, saying when it was trained here or reused from the cache."""
    model, reused = api.source_model(plan, progress=live.phase("source"))
    if plan.model is None:
        info = recorded_info(model)
        verb = "reused the cached" if reused else "trained a"
        where = f" ({info.checkpoint})" if info.checkpoint else ""
        err.print(escape(f"source: {verb} {plan.arch} on {info.dataset}, test top-1 {info.test_top1:.3f}{where}"))
    return model


def _render_plan(plan: api.ScanPlan, estimate: api.Estimate, json_output: bool) -> None:
    """``--dry-run``: what the scan would do and how long it would take, on stdout; nothing trained."""
    described = api.describe_plan(plan, estimate)
    if json_output:
        write_json(described)
        return
    console = stdout_console()
    console.print("[bold]plan[/bold] (--dry-run: nothing trained)")
    for key, value in described.items():
        if isinstance(value, dict):
            value = "; ".join(f"{name} {item}" for name, item in value.items())
        elif isinstance(value, list):
            value = ", ".join(map(str, value)) or "none"
        if key != "estimate":
            console.print(escape(f"  {key}: {value}"))
    console.print(escape(f"  estimated time: {estimate.describe()}"))


def _interrupted(out: Path | None, argv: list[str], finished: int) -> None:
    if out is None:
        sys.stderr.write("interrupted: no results saved (give --out DIR to keep finished runs and resume)\n")
        return
    saved = finished  # the progress callback's count, unless the folder says better
    with contextlib.suppress(ProbeError, OSError):
        _, status = folder_status(out)
        saved = status["done"] + status["failed"]
    sys.stderr.write(
        f"interrupted: {saved} run{'' if saved == 1 else 's'} saved in {out}; resume with: {resume_hint(argv)}\n"
    )


def _print_tables(measurement) -> None:
    """The results table, its quality and the recommendation, and the rank correlations with the baselines when
    there are any, on stdout."""
    console = stdout_console()
    console.print(results_table(measurement))
    console.print(escape(quality_line(measurement)))
    console.print(escape(recommendation_line(recommend(measurement))), soft_wrap=True)
    correlations = correlations_table(measurement)
    if correlations is not None:
        console.print(correlations)


def _render(measurement, out: Path | None, json_output: bool, err: Console) -> None:
    """The results table (or JSON) on stdout; the figures in ``out``."""
    if json_output:
        write_json(results_document(measurement))
    else:
        _print_tables(measurement)
        _print_data_lines(measurement)
    if out is None:
        return
    try:
        figures = write_figures(measurement, out)
    except Exception as error:  # the results are saved already; say so rather than lose them in a traceback
        fail(
            f"could not draw the figures ({type(error).__name__}: {error}); the results are saved: redraw with "
            f"probe report {out}"
        )
        raise Exit(1) from None
    err.print(escape(f"saved in {out}: results.json, results.csv, " + ", ".join(path.name for path in figures)))


@app.command()
def layers(
    arch: ArchOption = None,
    source: Annotated[Path | None, typer.Option("--source", help="List the layers of this checkpoint's model.")] = None,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help="Dataset whose input size the shapes are for, e.g. digits (1×8×8), cifar10 (3×32×32); a "
            f"checkpoint's own record wins. \\[default: {LISTING_DEFAULT_DATA}]",
        ),
    ] = None,
    width: WidthOption = None,
    image_size: Annotated[
        int | None,
        typer.Option("--image-size", help="List the layers for square inputs of this size (the data's channels)."),
    ] = None,
    pretrained: Annotated[
        bool,
        typer.Option(
            "--pretrained", help="List --arch at its pretrained weights' own input size (no weights are read)."
        ),
    ] = False,
    image_column: ImageColumnOption = None,
    label_column: LabelColumnOption = None,
    json_output: JsonOption = False,
) -> None:
    """List the probeable layers in forward order with their output shapes; mark the ones scan probes by default.

    Examples: [bold]probe layers --arch resnet18 --data cifar10[/bold];
    [bold]probe layers --arch vit_tiny_patch16_224 --pretrained[/bold]
    """
    listing = api.layer_listing(
        arch, source=source, data=data, arch_options=arch_options_of(arch or DEFAULT_ARCH, width),
        image_column=image_column, label_column=label_column, image_size=image_size, pretrained=pretrained,
    )  # fmt: skip
    rows = [
        {
            "name": layer.name,
            "kind": layer.kind,
            "shape": list(layer.shape) if layer.shape is not None else None,
            "default": bool(layer.default),
            "module_type": layer.module_type,
            "activation": layer.activation,
        }
        for layer in listing.layers
    ]
    if json_output:
        write_json({"arch": listing.arch, "data": listing.data, "input_shape": list(listing.shape), "layers": rows})
        return
    stdout_console().print(_layers_table(listing, rows))


def _layers_table(listing: api.LayerListing, rows: list[dict]) -> Table:
    shape = "×".join(map(str, listing.shape))
    table = Table(
        title=escape(f"probeable layers of {listing.arch} for {shape} inputs ({listing.data})"),
        caption=f"{sum(r['default'] for r in rows)} of {len(rows)} probed by default (✓); "
        "pick others with probe scan --layers NAME",
        header_style="bold",
    )
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("#", "right"),
        ("layer", "left"),
        ("kind", "left"),
        ("module", "left"),
        ("output shape", "left"),
    )
    for name, justify in (*columns, ("default", "center")):
        table.add_column(name, justify=justify)
    for index, row in enumerate(rows, start=1):
        shape_text = "×".join(map(str, row["shape"])) if row["shape"] else "—"
        cells = (str(index), row["name"], row["kind"], row["module_type"], shape_text, "✓" if row["default"] else "")
        table.add_row(*map(escape, cells))
    return table


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

    measurement, status = folder_status(folder)
    if measurement is None:
        raise ResultsError(
            f"'{folder}' holds no finished run yet ({status['description']}); run probe scan --out {folder}"
        )
    if json_output:
        write_json({"folder": str(folder), "status": status, "results": results_document(measurement)})
    else:
        _print_tables(measurement)
    err = stderr_console()
    if status["missing"] or status["corrupt"]:
        err.print(escape(f"partial results: {status['description']}"))
    else:
        err.print(escape(status["description"]))
    if not no_figures:
        where = folder if folder.is_dir() else folder.parent  # report also takes a results.json itself
        figures = write_figures(measurement, where)
        err.print(escape(f"redrew {', '.join(path.name for path in figures)} in {where}"))


@app.command("recommend")
def recommend_command(
    folder: Annotated[
        Path,
        typer.Argument(help="A results folder written by probe scan --out (or its results.json).", show_default=False),
    ],
    json_output: JsonOption = False,
) -> None:
    """Which layers to freeze before fine-tuning on the scan's target, from a saved results folder (no training).

    The rule and how it did against brute force are in docs/decision.md. Example: [bold]probe recommend
    results/digits[/bold]
    """
    measurement, status = folder_status(folder)
    if measurement is None:
        raise ResultsError(
            f"'{folder}' holds no finished run yet ({status['description']}); run probe scan --out {folder}"
        )
    found = recommend(measurement)
    if found["status"] == "unavailable":
        raise ResultsError(f"no recommendation for '{folder}': {found['reason']}")
    if json_output:
        write_json(found)
    else:
        stdout_console().print(escape(recommendation_line(found)), soft_wrap=True)
    if status["missing"] or status["corrupt"]:
        stderr_console().print(escape(f"partial results: {status['description']}"))
