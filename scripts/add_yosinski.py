"""Add the Yosinski baseline (AnB and AnB+, target task only) to a finished digits reproduction folder.

The reproduction script computes LogME and H-score with the scan; the Yosinski transfers cost as much as
the QUANTA runs themselves, so on a small machine they can be run afterwards, for the target task only:

    python scripts/add_yosinski.py results/reproduction/halves results/reproduction/sources/halves-source.pt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import probe
from probe.baselines import correlations, run_baselines
from probe.engine.prepare import prepare
from probe.report.figures import comparison_figure
from probe.results import Measurement
from probe.results.reading import load_folder
from probe.settings import RunSettings
from probe.util.files import atomic_write_bytes


def merge(folder: Path, extra: dict) -> None:
    """Merge ``extra`` into the folder's results.json and redraw comparison.png."""
    results = folder / "results.json"
    measurement = Measurement.from_dict(json.loads(results.read_text()))
    baselines = measurement.extras.setdefault("baselines", {"per_layer": {}, "correlations": {}})
    for layer, values in extra["per_layer"].items():
        baselines["per_layer"].setdefault(layer, {}).update(values)
    # correlations against the final λS of the complete scan
    recomputed = correlations(measurement, baselines["per_layer"])
    baselines["correlations"].update(recomputed)
    baselines["alone"] = extra.get("alone", baselines.get("alone"))
    atomic_write_bytes(results, json.dumps(measurement.to_dict(), indent=1, allow_nan=True).encode())
    comparison_figure(measurement, folder / "comparison.png")
    print(json.dumps(baselines["correlations"], indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a scan folder (finished, or with every AnB run of the first init)")
    parser.add_argument("source", type=Path, help="the source checkpoint of that scan")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    saved = args.folder / "yosinski.json"
    if saved.exists():
        extra = json.loads(saved.read_text())
    else:
        measurement, _ = load_folder(args.folder)
        settings = RunSettings.from_dict({**measurement.settings, "jobs": 1})
        source = probe.load_source(args.source)
        context = prepare(source, measurement.target, settings=settings).context  # AnB only

        def show(event) -> None:
            if event.epoch == event.epochs:
                print(
                    f"{event.spec.task} {event.spec.layer} seed {event.spec.seed}: top-1 {event.metrics['top1']:.3f}",
                    flush=True,
                )

        extra = run_baselines(context, measurement, ["yosinski"], progress=show)
        atomic_write_bytes(saved, json.dumps(extra, indent=1, allow_nan=True).encode())
    if (args.folder / "results.json").exists():
        merge(args.folder, extra)
    else:
        print(f"saved {saved}; run again when the scan has finished to merge it into results.json")


if __name__ == "__main__":
    main()
