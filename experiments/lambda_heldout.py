#!/usr/bin/env python3
"""Held-out quality of the nc head against the relative λ factor r (λ = r·tr(G/N)/d).

For each feature set and seed: a seeded 70/30 split per class; the statistics of the training
part; for every r on a grid, the nc head (scope all, all classes) and its held-out accuracy and
mean squared error to one-hot targets (summed over classes, as `lam="auto"` scores it); and the
r that `lam="auto"` picks from the held-out statistics. The same runs with the features
multiplied by 100 must give the same numbers (r is scale-free).

    python experiments/lambda_heldout.py [--seeds 5] [--mnist experiments/out/mnist-features]

Prints a markdown table (mean ± std over seeds). Needs numpy and the headstart package.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

import headstart

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from class_incremental import bundled_digits  # noqa: E402

GRID = [1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 1.0]


def l2(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)


def data_sets(mnist_dir):
    x, y = bundled_digits(512)
    sets = [("digits", x, y), ("digits-l2", l2(x), y)]
    f = os.path.join(mnist_dir, "features.npy")
    if os.path.exists(f):
        xm = np.load(f).astype(np.float32)
        ym = np.load(os.path.join(mnist_dir, "labels.npy")).astype(np.int64)
        sets += [("mnist", xm, ym), ("mnist-l2", l2(xm), ym)]
    else:
        print(f"({f} missing: MNIST sets skipped)", file=sys.stderr)
    return sets


def split(y, rng):
    train = np.zeros(len(y), bool)
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        train[members[: int(round(0.7 * len(members)))]] = True
    return train


def scores(head, x, y):
    logits = x.astype(np.float64) @ head.weight.T + head.bias
    ids = np.asarray(head.class_ids)
    acc = float((ids[logits.argmax(axis=1)] == y).mean())
    target = (ids[None, :] == y[:, None]).astype(np.float64)
    mse = float(((logits - target) ** 2).sum(axis=1).mean())
    return acc, mse


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--mnist", default=os.path.join(HERE, "out", "mnist-features"))
    args = p.parse_args()
    print("| data | r | held-out acc. | held-out MSE | acc. at features ×100 |")
    print("|---|---:|---:|---:|---:|")
    for name, x, y in data_sets(args.mnist):
        table = {r: [] for r in GRID}
        picks = []
        for seed in range(args.seeds):
            train = split(y, np.random.default_rng(seed))
            per_scale = {}
            for s in (1.0, 100.0):
                stats, val = headstart.Stats(x.shape[1]), headstart.Stats(x.shape[1])
                stats.update(np.ascontiguousarray(x[train] * s), y[train])
                val.update(np.ascontiguousarray(x[~train] * s), y[~train])
                per_scale[s] = [scores(stats.solve(lam=f"rel:{r}"), x[~train] * s, y[~train]) for r in GRID]
                if s == 1.0:
                    picks.append(stats.solve(lam="auto", val=val).lam_rule)
            for r, (acc, mse), (acc100, _) in zip(GRID, per_scale[1.0], per_scale[100.0]):
                table[r].append((acc, mse, acc100))
        for r in GRID:
            v = np.array(table[r])
            print(
                f"| {name} | {r:g} | {v[:, 0].mean():.4f} ± {v[:, 0].std():.4f} | {v[:, 1].mean():.4f} ± {v[:, 1].std():.4f} | "
                f"{v[:, 2].mean():.4f} |"
            )
        print(f"| {name} | auto picks | {', '.join(picks)} | | |")


if __name__ == "__main__":
    main()
