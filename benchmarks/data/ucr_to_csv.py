"""Convert UEA/UCR `.ts` files (as shipped inside the aeon wheel) to the long CSV layout of
`benchmarks/data/basicmotions/`: `sample,label,t,<channel...>`, one row per sample and step.

A one-off: the CSVs it wrote are committed, with their attribution, beside this script. To
reproduce them (aeon is never installed into the project's environment):

    pip download --no-deps aeon==1.6.0 -d /tmp/aeon && cd /tmp/aeon && unzip -q aeon-*.whl
    .venv/bin/python -m benchmarks.data.ucr_to_csv /tmp/aeon/aeon/datasets/data

Test splits are capped per class (`CAPS`, a seeded stratified draw) to keep the copies small;
training splits are kept whole. Variable-length samples (JapaneseVowels) are written at their
own length; the loader in `benchmarks/quality/data.py` pads them.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CAPS: dict[str, int | None] = {
    "GunPoint": None,  # 150 test samples of 150 steps: kept whole
    "ArrowHead": 30,  # 175 test samples of 251 steps -> at most 30 per class
    "ItalyPowerDemand": 60,  # 1,029 test samples of 24 steps -> at most 60 per class
    "JapaneseVowels": 20,  # 370 test samples -> at most 20 per speaker
}
SEED = 20261204


def read_ts(path: Path) -> tuple[list[np.ndarray], list[str]]:
    """A .ts file -> samples (each (T, F) float64) and their class labels."""
    samples, labels = [], []
    in_data = False
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            in_data = line.lower() == "@data"
            continue
        *dims, label = line.split(":")
        channels = [np.array([float(v) for v in d.split(",")]) for d in dims]
        samples.append(np.stack(channels, axis=1))  # (T, F)
        labels.append(label.strip())
    return samples, labels


def cap(labels: list[str], per_class: int | None, rng: np.random.Generator) -> list[int]:
    """Indices of a stratified draw of at most `per_class` samples per class, in file order."""
    if per_class is None:
        return list(range(len(labels)))
    keep: list[int] = []
    for label in sorted(set(labels)):
        members = [i for i, y in enumerate(labels) if y == label]
        if len(members) > per_class:
            members = sorted(rng.choice(members, size=per_class, replace=False).tolist())
        keep += members
    return sorted(keep)


def write(path: Path, samples: list[np.ndarray], labels: list[str], keep: list[int]) -> int:
    n_channels = samples[0].shape[1]
    names = ["value"] if n_channels == 1 else [f"c{j}" for j in range(n_channels)]
    rows = 0
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["sample", "label", "t", *names])
        for new_index, i in enumerate(keep):
            for t, row in enumerate(samples[i]):
                out.writerow([new_index, labels[i], t, *(f"{v:.7g}" for v in row)])
                rows += 1
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", type=Path, help="aeon/datasets/data of an unzipped aeon wheel")
    args = parser.parse_args()
    rng = np.random.default_rng(SEED)
    for name, per_class in CAPS.items():
        folder = HERE / name.lower()
        folder.mkdir(exist_ok=True)
        for part in ("TRAIN", "TEST"):
            samples, labels = read_ts(args.source / name / f"{name}_{part}.ts")
            keep = cap(labels, per_class if part == "TEST" else None, rng)
            rows = write(folder / f"{name.lower()}_{part.lower()}.csv", samples, labels, keep)
            print(f"{name} {part.lower()}: {len(keep)} of {len(samples)} samples, {rows} rows")


if __name__ == "__main__":
    main()
