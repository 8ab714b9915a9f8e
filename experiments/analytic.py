#!/usr/bin/env python3
"""A rehearsal-free, class-incremental analytic learner (RanPAC / ACIL style) on frozen
features: after each task, a ridge head over every class seen so far is solved from the
statistics alone, on the plain features and on seeded random features z = ReLU(x @ R) of
width M (headstart's `Stats(dim, expand=RandomFeatures(dim, M, seed))`). No sample is kept.

Per task it reports the test accuracy over the classes seen so far, and its class-balanced
form. λ is relative (factor × the covariance's mean eigenvalue): the default 1e-3, and
`lam="auto"` picked on held-out statistics (a split of each task's training rows, kept in a
second Stats) from a grid of relative factors.

`--reference-m M` repeats the computation in numpy for that width, from the raw design matrix
(R from the documented Philox definition, Z = ReLU(X R), centred one-hot ridge solved with
numpy.linalg.solve) and reports the largest differences of weights, logits and predictions.

Usage:

    python experiments/analytic.py                                  # bundled UCI digits
    python experiments/analytic.py --features F.npy --labels L.npy --name docstrings

Writes results.json and summary.md into --out (default experiments/out/analytic-<name>).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

import headstart

HERE = os.path.dirname(os.path.abspath(__file__))
GRID = ["rel:1e-4", "rel:1e-3", "rel:1e-2", "rel:1e-1", "rel:1", "rel:10"]


def load(args):
    import class_incremental as ci  # the same data loading and splits as the other runners

    if args.features:
        x = np.load(args.features).astype(np.float32)
        y = np.load(args.labels).astype(np.int64)
        name = args.name or os.path.splitext(os.path.basename(args.features))[0]
    else:
        x, y = ci.bundled_digits(512)
        name = args.name or "digits"
    return name, x, y, ci.split


def philox_matrix(d, m, seed):
    """R from its definition (docs/math.md, "Random features"), in numpy uint64 arithmetic."""
    mask = np.uint64(0xFFFFFFFF)
    i, j = np.meshgrid(np.arange(d, dtype=np.uint64), np.arange(m, dtype=np.uint64), indexing="ij")
    c = [j, i, np.zeros_like(i), np.zeros_like(i)]
    k0, k1 = np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32)
    for r in range(10):
        if r:
            k0, k1 = (k0 + np.uint64(0x9E3779B9)) & mask, (k1 + np.uint64(0xBB67AE85)) & mask
        p0, p1 = c[0] * np.uint64(0xD2511F53), c[2] * np.uint64(0xCD9E8D57)
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & mask, (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & mask]
    s = (c[0] + c[1] + c[2] + c[3]).astype(np.int64) - ((1 << 33) - 2)
    return (s.astype(np.float64) * (np.sqrt(3.0) / 2.0**32)).astype(np.float32)


def numpy_ridge(z, y, classes, factor):
    """Centred one-hot ridge with relative λ, as headstart's `form="ridge"`."""
    n, m = z.shape
    mu = z.mean(0)
    zc = z - mu
    cov = zc.T @ zc / n
    lam = factor * np.trace(cov) / m
    targets = (y[:, None] == np.asarray(classes)[None, :]).astype(np.float64)
    w = np.linalg.solve(cov + lam * np.eye(m), zc.T @ targets / n).T
    b = targets.mean(0) - w @ mu
    return w, b


def accuracy(logits, y, classes):
    pred = np.asarray(classes)[logits.argmax(1)]
    hit = pred == y
    per_class = [hit[y == c].mean() for c in classes if (y == c).any()]
    return float(hit.mean()), float(np.mean(per_class))


def logits_of(head, z):
    return z @ head.weight.T + head.bias


def run(args):
    name, x, y, split = load(args)
    widths = [0] + args.m
    results = {"name": name, "rows": int(len(y)), "dim": int(x.shape[1]), "classes": int(len(np.unique(y))),
               "tasks": args.tasks, "widths": widths, "seeds": [], "machine": platform.processor() or platform.machine()}
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        train, test = split(y, args.test_fraction, rng)
        held = rng.random(len(train)) < args.val_fraction
        val, train = train[held], train[~held]
        order = rng.permutation(np.unique(y))
        tasks = np.array_split(order, args.tasks)
        record = {"seed": seed, "order": [int(c) for c in order], "per_width": {}}
        for m in widths:
            if m >= args.big and seed >= args.big_seeds:
                continue
            expand = headstart.RandomFeatures(x.shape[1], m, seed=args.expand_seed) if m else None
            stats = headstart.Stats(x.shape[1], expand=expand)
            held_out = headstart.Stats(x.shape[1], expand=expand)
            seen: list = []
            acc, bal, seconds, acc_auto, lam_auto = {}, {}, [], [], []
            for t, task in enumerate(tasks):
                seen += [int(c) for c in task]
                rows = train[np.isin(y[train], task)]
                vrows = val[np.isin(y[val], task)]
                started = time.perf_counter()
                stats.update(x[rows], y[rows])
                held_out.update(x[vrows], y[vrows])
                tr = test[np.isin(y[test], seen)]
                z = expand.transform(x[tr].astype(np.float64)) if expand else x[tr].astype(np.float64)
                for k, lam in enumerate(args.lams):
                    head = stats.solve(form="ridge", lam=f"rel:{lam}", classes=seen)
                    if k == 0:
                        seconds.append(time.perf_counter() - started)
                        first = head
                    a, cb = accuracy(logits_of(head, z), y[tr], seen)
                    acc.setdefault(str(lam), []).append(a)
                    bal.setdefault(str(lam), []).append(cb)
                head = first
                if args.auto and (t == len(tasks) - 1 or args.auto_every_task):
                    auto = stats.solve(form="ridge", lam="auto", val=held_out, grid=GRID, classes=seen)
                    acc_auto.append(accuracy(logits_of(auto, z), y[tr], seen)[0])
                    lam_auto.append(auto.lam_rule)
                accs = " ".join(f"{v[-1]:.4f}" for v in acc.values())
                print(f"{name} seed {seed} M={m or 'plain'} task {t + 1}: acc {accs} ({seconds[-1]:.2f} s)", flush=True)
            entry = {"accuracy": acc, "balanced": bal, "seconds": seconds}
            if acc_auto:
                entry.update(accuracy_auto=acc_auto, lam_auto=lam_auto)
            record["per_width"][str(m)] = entry
            if m and m == args.reference_m and seed == 0:
                record["reference"] = reference_check(x, y, train, test, seen, m, args, head, expand)
        results["seeds"].append(record)
    return results


def reference_check(x, y, train, test, seen, m, args, head, expand):
    """The last task's head again, in numpy from the raw design matrix."""
    r = philox_matrix(x.shape[1], m, args.expand_seed).astype(np.float64)
    assert np.array_equal(r.astype(np.float32), expand.matrix()), "R differs from the documented definition"
    rows = train[np.isin(y[train], seen)]
    z = np.maximum(x[rows].astype(np.float64) @ r, 0.0)
    w, b = numpy_ridge(z, y[rows], seen, args.lams[0])
    tr = test[np.isin(y[test], seen)]
    zt = np.maximum(x[tr].astype(np.float64) @ r, 0.0)
    ours, theirs = logits_of(head, zt), zt @ w.T + b
    return {
        "m": m,
        "weight_rel_diff": float(np.abs(head.weight - w).max() / np.abs(w).max()),
        "logit_rel_diff": float(np.abs(ours - theirs).max() / np.abs(theirs).max()),
        "same_predictions": float((ours.argmax(1) == theirs.argmax(1)).mean()),
        "accuracy_numpy": accuracy(theirs, y[tr], seen)[0],
        "accuracy_headstart": accuracy(ours, y[tr], seen)[0],
    }


def summary(res):
    widths = res["widths"]
    lines = [f"# Analytic learner on {res['name']} ({res['classes']} classes, {res['dim']}-d, {res['tasks']} tasks, "
             f"{len(res['seeds'])} seeds)", "",
             "Test accuracy over the classes seen so far after each task (mean over the seeds run at that width; "
             "class-balanced in brackets). Ridge head, rehearsal-free; λ relative (× the covariance's mean eigenvalue).",
             ""]
    head = "| M | λ | seeds | " + " | ".join(f"task {t + 1}" for t in range(res["tasks"])) + " | solve s (last task) |"
    lines += [head, "|" + "---|" * (res["tasks"] + 4)]
    lams = list(res["seeds"][0]["per_width"]["0"]["accuracy"])
    for lam in lams:
        for m in widths:
            runs = [s["per_width"][str(m)] for s in res["seeds"] if str(m) in s["per_width"]]
            acc = np.mean([r["accuracy"][lam] for r in runs], 0)
            bal = np.mean([r["balanced"][lam] for r in runs], 0)
            sec = np.median([r["seconds"][-1] for r in runs])
            cells = " | ".join(f"{a:.3f} ({b:.3f})" for a, b in zip(acc, bal))
            lines.append(f"| {m or 'plain'} | {lam} | {len(runs)} | {cells} | {sec:.2f} |")
    lines += ["", "Final accuracy gain over the plain head at the same λ, same seeds (points):", ""]
    for lam in lams:
        for m in widths[1:]:
            pairs = [(s["per_width"][str(m)]["accuracy"][lam][-1], s["per_width"]["0"]["accuracy"][lam][-1])
                     for s in res["seeds"] if str(m) in s["per_width"]]
            gain = 100 * np.array([a - b for a, b in pairs])
            lines.append(f"- λ {lam}, M = {m}: mean {gain.mean():+.1f}, range {gain.min():+.1f} to {gain.max():+.1f} ({len(pairs)} seeds)")
    autos = [1 for s in res["seeds"] for r in s["per_width"].values() if "accuracy_auto" in r]
    if autos:
        lines += ["", "λ picked on held-out statistics (`lam=\"auto\"`, grid rel 1e-4 … 10), last task:", "",
                  f"| M | seed | λ {lams[0]} | auto | λ picked |", "|---|---|---|---|---|"]
        for s in res["seeds"]:
            for m in widths:
                r = s["per_width"].get(str(m), {})
                if "accuracy_auto" in r:
                    default = r["accuracy"][lams[0]][-1]
                    lines.append(f"| {m or 'plain'} | {s['seed']} | {default:.3f} | {r['accuracy_auto'][-1]:.3f} | {r['lam_auto'][-1]} |")
    ref = res["seeds"][0].get("reference")
    if ref:
        lines += ["", f"numpy reference at M = {ref['m']} (last task, seed 0): weights differ by {ref['weight_rel_diff']:.1e} "
                  f"relative, logits by {ref['logit_rel_diff']:.1e}; {100 * ref['same_predictions']:.2f}% of test predictions "
                  f"agree; accuracy {ref['accuracy_headstart']:.4f} (headstart) and {ref['accuracy_numpy']:.4f} (numpy)."]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features")
    p.add_argument("--labels")
    p.add_argument("--name")
    p.add_argument("--tasks", type=int, default=5)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--m", type=lambda s: [int(v) for v in s.split(",")], default=[2048, 4096, 8192, 16384])
    p.add_argument("--lams", type=lambda s: [float(v) for v in s.split(",")], default=[1e-3, 1e-1],
                   help="relative λ factors of the fixed-λ heads (the first is timed and checked against numpy)")
    p.add_argument("--big", type=int, default=16384, help="widths from this one run on --big-seeds seeds only")
    p.add_argument("--big-seeds", type=int, default=1)
    p.add_argument("--auto", action="store_true", help="also solve with lam='auto' on held-out statistics")
    p.add_argument("--auto-every-task", action="store_true")
    p.add_argument("--expand-seed", type=int, default=0)
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--val-fraction", type=float, default=0.15, help="training rows held out for lam='auto'")
    p.add_argument("--reference-m", type=int, default=2048, help="numpy reference at this width (0: none)")
    p.add_argument("--out")
    args = p.parse_args()
    import sys

    sys.path.insert(0, HERE)
    res = run(args)
    out = args.out or os.path.join(HERE, "out", f"analytic-{res['name']}")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    text = summary(res)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
