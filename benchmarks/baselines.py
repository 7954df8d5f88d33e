"""What each baseline costs per layer against one QUANTA run at the same layer, on digits.

The source is the cached paper CNN of ``probe scan`` (trained here once if there is none), the target task
digits[5-9] with the digits preset (12 epochs), one seed. Per layer: one QUANTA run (``engine.run.run_one``),
the source's features of that layer (train + test split, computed once and shared by every lens), each lens on
those features (median of ``--repeats``), the end-of-run CKA hook, and the two Yosinski runs (frozen,
fine-tuned). Once per scan: the target trained alone (Yosinski's baseB, shared with ``cka_alone``) and the
source head's LEEP + NCE. Only ratios to the QUANTA run of the layer are printed; no time is asserted.

    .venv/bin/python benchmarks/baselines.py [--layers conv1,conv4,fc] [--repeats 3] [--threads 1]

(from a worktree other than the installed checkout, put it first: PYTHONPATH=. .venv/bin/python ...)
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from _common import header

from probe.api import cached_source, prepare, scan_settings, source_training_settings
from probe.baselines import compare, lenses
from probe.baselines.scores import h_score, layer_features, logme
from probe.baselines.transfer import train_alone, train_transfer
from probe.engine.run import run_one
from probe.results.schema import RunSpec


def seconds(work: Callable[[], object], repeats: int = 1) -> float:
    """The median wall time of ``repeats`` calls of ``work``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_lenses(context, layer: str, alone_model, repeats: int) -> dict[str, float]:
    """Seconds of each lens on the layer's features (computed once here, as run_baselines does)."""
    train, test, seed, source = (
        context.tasks["AnB"].train,
        context.tasks["AnB"].test,
        context.settings.seed,
        context.source,
    )
    f_train, f_test = layer_features(source, layer, train.x), layer_features(source, layer, test.x)
    spec = RunSpec(layer, 0.5, "AnB", seed)
    return {
        "logme": seconds(lambda: logme(f_train, train.y), repeats),
        "hscore": seconds(lambda: h_score(f_train, train.y, shrinkage=True), repeats),
        "hscore_plain": seconds(lambda: h_score(f_train, train.y), repeats),
        "transrate": seconds(lambda: lenses.transrate(f_train, train.y), repeats),
        "linear": seconds(lambda: lenses.linear_probe_accuracy(f_train, train.y, f_test, test.y, seed=seed), repeats),
        "knn": seconds(lambda: lenses.knn_accuracy(f_train, train.y, f_test, test.y), repeats),
        # the alone target's features of the layer + the CKA (the source's test features are shared)
        "cka_alone": seconds(lambda: lenses.linear_cka(f_test, layer_features(alone_model, layer, test.x)), repeats),
        # what each QUANTA run pays at its end when cka is asked: both models' test features + the CKA
        "cka run-end": seconds(lambda: compare.cka_after_run(context, spec, alone_model), repeats),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="conv1,conv4,fc")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    layers = [name.strip() for name in args.layers.split(",") if name.strip()]
    settings = scan_settings("digits[5-9]", jobs=1, device="cpu")
    source, _ = cached_source("paper-cnn", "digits[0-4]", settings=source_training_settings("digits[0-4]"))
    context = prepare(source, "digits[5-9]", settings=settings).context
    train, test = context.tasks["AnB"].train, context.tasks["AnB"].test
    header(
        "baselines: the cost of each lens per layer / one QUANTA run at the same layer",
        layers=",".join(layers),
        epochs=settings.epochs,
        n_train=len(train),
        n_test=len(test),
        repeats=args.repeats,
    )
    seed = settings.seed
    alone = seconds(lambda: train_alone(context, "AnB", seed))
    alone_model = train_alone(context, "AnB", seed).model
    with torch.no_grad():
        logits = source(train.x).double()
    probs = torch.softmax(logits, 1)
    head = seconds(lambda: torch.softmax(source(train.x).double(), 1), args.repeats) + seconds(
        lambda: (lenses.leep(probs, train.y), lenses.nce(probs.argmax(1), train.y)), args.repeats
    )

    columns = ["features", "logme", "hscore", "hscore_plain", "transrate", "linear", "knn", "cka_alone", "cka run-end"]
    columns += ["AnB frozen", "AnB+ tuned"]
    print(f"{'layer':<7}" + "".join(f"{c:>13}" for c in columns))
    quanta_runs = []
    for layer in layers:
        quanta = seconds(lambda layer=layer: run_one(context, RunSpec(layer, 0.5, "AnB", seed)))
        features = seconds(
            lambda layer=layer: (layer_features(source, layer, train.x), layer_features(source, layer, test.x)),
            args.repeats,
        )
        costs = measure_lenses(context, layer, alone_model, args.repeats)
        costs["features"] = features
        costs["AnB frozen"] = seconds(lambda layer=layer: train_transfer(context, layer, "AnB", seed, frozen=True))
        costs["AnB+ tuned"] = seconds(lambda layer=layer: train_transfer(context, layer, "AnB", seed, frozen=False))
        quanta_runs.append(quanta)
        print(f"{layer:<7}" + "".join(f"{costs[c] / quanta:>13.2e}" for c in columns))
    mean = statistics.fmean(quanta_runs)
    print(
        f"# once per scan, / the mean QUANTA run: target trained alone {alone / mean:.3f}; LEEP+NCE {head / mean:.2e}"
    )


if __name__ == "__main__":
    main()
