"""Where task (c)'s seed spread comes from: the training seed, or the labels a seed picks.

    .venv/bin/python -m benchmarks.quality.spread                  # ~15 min on one core
    .venv/bin/python -m benchmarks.quality.spread --sets gunpoint --counts 4,8

In task (c) a repetition's seed picks the labelled samples and the ingest order as well as
the training seed, so the sd over seeds mixes two things. This diagnostic, in-process, separates
them: "fixed" keeps repetition 0's labels and order and varies only the training seed,
"varied" changes all three as the harness does. Vigil here is `models.fit` with the service's
defaults (ensemble of 3, step budget with the class floor, a 20 % validation split at random,
which is what the service does when windows do not overlap); the ES classifier keeps the
harness's protocol (classify.py). In-process, not through the API: a diagnostic, not a figure
against a target.
"""

from __future__ import annotations

import argparse
import statistics

import models
from benchmarks.models.common import class_specs, step_labels
from benchmarks.quality.classify import picks
from benchmarks.quality.common import es_classifier
from benchmarks.quality.data import LabelledSet, class_slug, load_set

COUNTS = {"basicmotions": (4, 8), "gunpoint": (4, 8, 16)}


def vigil_accuracy(data: LabelledSet, n: int, split_seed: int, seed: int) -> float:
    labelled, order = picks(data, n, split_seed)
    windows = data.train.windows[order]
    model = models.fit(
        models.TrainingData(
            windows, step_labels(data.train.y[order], labelled[order], windows.shape[1])
        ),
        classes=class_specs([class_slug(c) for c in data.classes]),
        channels=list(data.channels),
        train_config=models.TrainConfig(seed=seed, threads=1),
    )
    return float((model.predict_proba(data.test.windows).argmax(axis=1) == data.test.y).mean())


def es_accuracy(data: LabelledSet, n: int, split_seed: int, seed: int) -> float:
    labelled, _ = picks(data, n, split_seed)
    slugs = [class_slug(c) for c in data.classes]
    probs, _ = es_classifier(
        data.train.windows, data.train.y, labelled, slugs, data.channels, data.test.windows, seed
    )
    return float((probs.argmax(axis=1) == data.test.y).mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", default="basicmotions,gunpoint")
    parser.add_argument("--counts", default=None, help="N labelled, e.g. 4,8 (default per set)")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    models.set_threads(1)
    print("| data set | N | method | labels | accuracy per training seed | mean ± sd |")
    print("|---|---|---|---|---|---|")
    for name in args.sets.split(","):
        data = load_set(name)
        counts = [int(c) for c in args.counts.split(",")] if args.counts else COUNTS[name]
        for n in counts:
            for method, accuracy in (("Vigil", vigil_accuracy), ("ES", es_accuracy)):
                for labels in ("fixed", "varied"):
                    accs = [
                        accuracy(data, n, 0 if labels == "fixed" else seed, seed)
                        for seed in range(args.seeds)
                    ]
                    shown = ", ".join(f"{a:.3f}" for a in accs)
                    print(
                        f"| {name} | {n} | {method} | {labels} | {shown} | "
                        f"{statistics.mean(accs):.3f} ± {statistics.stdev(accs):.3f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
