#!/usr/bin/env python3
"""headstart's Avalanche plugin in a class-incremental benchmark built from feature tensors.

Avalanche's `class_incremental_benchmark` splits a feature set (bundled UCI digits by default,
or --features/--labels .npy files) into --experiences experiences of disjoint classes, in a
seeded random class order, with a seeded 70/30 train/test split per class; nothing is
downloaded. The model is a backbone (the identity on fixed features, or with --head mlp a
trainable hidden ReLU layer whose output the plugin reads) under an Avalanche
`IncrementalClassifier`, trained with AdamW by Naive and by Replay, each with and without
`headstart.avalanche.HeadstartPlugin` at its defaults (the recommended start: scale-free λ,
calibration from the statistics). The runs of one seed start from the same weights and see
the same mini-batches (the plugin does not draw from torch's random stream).

Reported, per strategy and plugin on/off, mean ± std over --seeds seeds:
  - the loss of each experience's first mini-batch, before any update, and its mean over
    experiences 2..E (the figure the issue names: with/without <= 0.6);
  - accuracy on the test data of the classes seen so far after each experience, and final
    accuracy on every class;
  - the plugin's wall time as a share of the strategy's training time (train() calls).

Each experience trains for --iters iterations (default 300, as in docs/results.md's runs),
rounded up to whole epochs of its own data.

Usage:
    python experiments/avalanche_split.py                                   # bundled digits
    python experiments/avalanche_split.py --features F.npy --labels L.npy --name mnist

Writes results.json and summary.md into --out (default experiments/out/avalanche-<name>).
Needs torch, avalanche-lib and the headstart package (`pip install ./python avalanche-lib`).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import warnings

import numpy as np
import torch
from avalanche.core import SupervisedPlugin

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from class_incremental import load_data, split  # noqa: E402

STRATEGIES = ("naive", "replay")


def load(args):
    """The feature set, as class_incremental.py loads it, with class ids made 0..C-1 (as
    Avalanche's benchmarks want)."""
    name, x, y = load_data(argparse.Namespace(**vars(args), scale=1.0))
    _, y = np.unique(y, return_inverse=True)
    return name, x.astype(np.float32), y.astype(np.int64)


class Recorder(SupervisedPlugin):
    """Records each experience's first mini-batch loss (before the first update)."""

    def __init__(self):
        super().__init__()
        self.losses, self.first = [], False

    def before_training_exp(self, strategy, **kwargs):
        self.first = True

    def before_backward(self, strategy, **kwargs):
        if self.first:
            self.losses.append(float(strategy.loss))
            self.first = False


class Snapshot(SupervisedPlugin):
    """Placed before HeadstartPlugin: keeps the model's state as the strategy grew it, with the
    IncrementalClassifier's default rows for the new classes (the start without headstart)."""

    def __init__(self):
        super().__init__()
        self.state = None

    def before_training_exp(self, strategy, **kwargs):
        self.state = copy.deepcopy(strategy.model.state_dict())


class Probe(SupervisedPlugin):
    """Placed after HeadstartPlugin: from the same model state, trains a copy with the default
    rows (Snapshot's) and a copy with headstart's rows for `iters` iterations on the same
    batches, and records both loss curves. The batches are the experience's data, plus, when
    the strategy keeps a replay buffer, half of every batch from the buffer (as Replay mixes
    them). The strategy's own training and its random stream are untouched."""

    def __init__(self, snapshot: Snapshot, iters: int, batch: int, lr: float, seed: int):
        super().__init__()
        self.snapshot, self.iters, self.batch, self.lr, self.seed = snapshot, iters, batch, lr, seed
        self.curves = []  # per experience from the second: {"random": [...], "headstart": [...]}
        self.index = 0

    def before_training_exp(self, strategy, **kwargs):
        self.index += 1
        if self.index == 1 or self.iters <= 0:
            return
        tensors = lambda d: (torch.stack([d[i][0] for i in range(len(d))]), torch.tensor([int(d[i][1]) for i in range(len(d))]))  # noqa: E731
        xs, ys = tensors(strategy.experience.dataset)
        buffers = [getattr(getattr(p, "storage_policy", None), "buffer", None) for p in strategy.plugins]
        buffers = [b for b in buffers if b is not None and len(b) > 0]
        mem = tensors(buffers[0]) if buffers else None
        gen = torch.Generator().manual_seed(self.seed * 1000 + self.index)
        draws = []
        for _ in range(self.iters + 1):
            if mem is None:
                draws.append((xs, ys, torch.randint(0, len(ys), (min(self.batch, len(ys)),), generator=gen)))
            else:
                draws.append((xs, ys, torch.randint(0, len(ys), (self.batch // 2,), generator=gen)))
                draws[-1] = draws[-1] + (mem[0], mem[1], torch.randint(0, len(mem[1]), (self.batch - self.batch // 2,), generator=gen))
        curves = {}
        device = next(strategy.model.parameters()).device
        for start, state in (("random", self.snapshot.state), ("headstart", strategy.model.state_dict())):
            with torch.random.fork_rng():
                model = copy.deepcopy(strategy.model)
                model.load_state_dict(state)
                model.train()
                opt = torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=1e-4)
                losses = []
                for draw in draws:
                    bx, by = draw[0][draw[2]], draw[1][draw[2]]
                    if len(draw) > 3:
                        bx, by = torch.cat([bx, draw[3][draw[5]]]), torch.cat([by, draw[4][draw[5]]])
                    loss = torch.nn.functional.cross_entropy(model(bx.to(device)), by.to(device))
                    losses.append(loss.item())
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            curves[start] = losses
        self.curves.append(curves)


def accuracy(model, x, y, device):
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(x).to(device)).argmax(dim=1).cpu().numpy()
    model.train()
    return float((predicted == y).mean()) if len(y) else float("nan")


def run(strategy_name, with_plugin, seed, x, y, args):
    from avalanche.benchmarks.scenarios import class_incremental_benchmark
    from avalanche.models import IncrementalClassifier
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.supervised import Naive, Replay

    from headstart.avalanche import HeadstartPlugin

    rng = np.random.default_rng(seed)
    train_idx, test_idx = split(y, 0.3, rng)
    order = [int(c) for c in rng.permutation(np.unique(y))]

    def dataset(idx):
        d = torch.utils.data.TensorDataset(torch.from_numpy(x[idx]), torch.from_numpy(y[idx]))
        d.targets = y[idx].tolist()  # the benchmark adds task labels, which LwF and others need
        return d

    bench = class_incremental_benchmark(
        {"train": dataset(train_idx), "test": dataset(test_idx)}, class_order=order, num_experiences=args.experiences
    )
    torch.manual_seed(seed)
    d = x.shape[1]
    if args.head == "mlp":
        backbone = torch.nn.Sequential(torch.nn.Linear(d, args.hidden), torch.nn.ReLU())
        width = args.hidden
    else:
        backbone, width = torch.nn.Identity(), d
    classifier = IncrementalClassifier(width, initial_out_features=2)
    model = torch.nn.Sequential(backbone, classifier).to(args.device)
    recorder = Recorder()
    plugins = [recorder]
    plugin = probe = None
    if with_plugin:
        snapshot = Snapshot()
        plugin = HeadstartPlugin(backbone, classifier, seed=seed, **args.plugin_options)
        probe = Probe(snapshot, args.probe_iters, args.batch, args.lr, seed)
        plugins += [snapshot, plugin, probe]
    common = dict(
        model=model,
        optimizer=torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4),
        criterion=torch.nn.CrossEntropyLoss(),
        train_mb_size=args.batch,
        train_epochs=args.epochs,
        eval_mb_size=256,
        device=args.device,
        plugins=plugins,
        evaluator=EvaluationPlugin(loggers=[]),
    )
    if strategy_name == "replay":
        strategy = Replay(mem_size=args.replay_per_class * len(order), **common)
    else:
        strategy = Naive(**common)

    seen, acc_seen, train_seconds = [], [], 0.0
    x_test, y_test = x[test_idx], y[test_idx]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for experience in bench.train_stream:
            if args.iters:
                batches = -(-len(experience.dataset) // args.batch)
                strategy.train_epochs = max(1, -(-args.iters // batches))
            start = time.perf_counter()
            strategy.train(experience)
            train_seconds += time.perf_counter() - start
            seen += sorted(experience.classes_in_this_experience)
            mask = np.isin(y_test, seen)
            acc_seen.append(accuracy(model, x_test[mask], y_test[mask], args.device))
    result = {
        "strategy": strategy_name,
        "plugin": with_plugin,
        "seed": seed,
        "order": order,
        "first_losses": recorder.losses,
        "acc_seen": acc_seen,
        "final_acc": accuracy(model, x_test, y_test, args.device),
        "train_seconds": train_seconds,
    }
    if plugin is not None:
        result["plugin_seconds"] = plugin.seconds
        result["scales"] = [h.init.scale if h.init else None for h in plugin.history]
        result["calibration_loss"] = [h.init.loss_after if h.init else None for h in plugin.history]
        result["at_bound"] = [h.init.at_bound if h.init else None for h in plugin.history]
        result["lam"] = [h.lam for h in plugin.history]
        result["margin_bound"] = [h.init.margin_bound if h.init else None for h in plugin.history]
        result["probes"] = probe.curves
    return result


def mean_std(values):
    values = np.asarray(values, dtype=np.float64)
    return f"{values.mean():.3f} ± {values.std():.3f}"


def summarise(name, results, args, wall):
    lines = [
        f"# {name}: Avalanche, {args.experiences} experiences, {args.seeds} seeds",
        "",
        f"{len(results[0]['order'])} classes; backbone: {args.head}; AdamW lr {args.lr}, batch {args.batch}, "
        f"{f'{args.iters} iterations (whole epochs)' if args.iters else f'{args.epochs} epochs'} per experience; Replay: {args.replay_per_class} samples per class in memory. "
        f"Plugin: HeadstartPlugin({', '.join(f'{k}={v!r}' for k, v in args.plugin_options.items()) or 'defaults'}). Wall time {wall:.0f} s.",
        "",
        "Whole runs (secondary: the runs hold different old rows after the first switch):",
        "",
        "| strategy | plugin | first-batch loss, exp. 2–E | ÷ without | final acc. | Δ acc. vs without (paired) | plugin share of training time |",
        "|---|---|---|---|---|---|---|",
    ]
    figures = {}
    for strategy in STRATEGIES:
        runs = {p: sorted((r for r in results if r["strategy"] == strategy and r["plugin"] == p), key=lambda r: r["seed"]) for p in (False, True)}
        if not runs[False] or not runs[True]:
            continue
        loss = {p: [np.mean(r["first_losses"][1:]) for r in runs[p]] for p in runs}
        final = {p: [r["final_acc"] for r in runs[p]] for p in runs}
        ratio = np.mean(loss[True]) / np.mean(loss[False])
        delta = np.array(final[True]) - np.array(final[False])
        share = [r["plugin_seconds"] / r["train_seconds"] for r in runs[True]]
        figures[strategy] = {
            "loss_without": float(np.mean(loss[False])),
            "loss_with": float(np.mean(loss[True])),
            "loss_ratio": float(ratio),
            "final_without": float(np.mean(final[False])),
            "final_with": float(np.mean(final[True])),
            "final_delta_mean": float(delta.mean()),
            "final_delta_min": float(delta.min()),
            "share_median": float(np.median(share)),
            "share_max": float(np.max(share)),
        }
        lines.append(f"| {strategy} | without | {mean_std(loss[False])} | – | {mean_std(final[False])} | – | – |")
        lines.append(
            f"| {strategy} | with | {mean_std(loss[True])} | **{ratio:.2f}** | {mean_std(final[True])} | "
            f"{delta.mean():+.3f} (min {delta.min():+.3f}) | {100 * np.median(share):.1f}% (max {100 * np.max(share):.1f}%) |"
        )
    if args.probe_iters > 0:
        n = args.probe_iters
        lines += [
            "",
            f"From the same state (the primary figure): at every switch of the runs with the plugin, the model state as "
            f"the strategy grew it is copied twice, one copy keeping the classifier's default rows for the new classes and "
            f"one taking the plugin's rows; both train {n} iterations on the same batches (the experience's data, half "
            f"from the replay buffer under Replay).",
            "",
            f"| strategy | first-batch loss ÷ default rows' (mean) | worst switch | switches above | ÷ after 10 it. | ÷ after {n} it. | it. default rows need to reach headstart's first loss | scale spread | new-row margin bound |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        sys.path.insert(0, HERE)
        from class_incremental import iterations_to_reach

        for strategy in STRATEGIES:
            runs = [r for r in results if r["strategy"] == strategy and r["plugin"]]
            switches = [c for r in runs for c in r["probes"]]
            if not switches:
                continue
            r0 = [c["headstart"][0] / c["random"][0] for c in switches]
            r10 = [c["headstart"][10] / c["random"][10] for c in switches if len(c["random"]) > 10]
            rn = [c["headstart"][n] / c["random"][n] for c in switches]
            need = [iterations_to_reach(c["random"], c["headstart"][0]) for c in switches]
            never = sum(v is None for v in need)
            need = [n + 1 if v is None else v for v in need]
            spreads = []
            for r in runs:
                sc = [v for v in r["scales"][1:] if v]
                if len(sc) > 1:
                    spreads.append(max(max(v / sc[0], sc[0] / v) for v in sc))
            bounds = [b for r in runs for b in r["margin_bound"] if b is not None]
            figures.setdefault(strategy, {}).update(
                {"same_state_ratio_mean": float(np.mean(r0)), "same_state_ratio_worst": float(np.max(r0)), "same_state_above": int(sum(v > 1 for v in r0))}
            )
            lines.append(
                f"| {strategy} | **{np.mean(r0):.2f}** | {np.max(r0):.2f} | {sum(v > 1 for v in r0)}/{len(r0)} | "
                f"{np.mean(r10):.2f} | {np.mean(rn):.2f} | {np.mean(need):.1f}{f' ({never} never in {n})' if never else ''} | "
                f"{(f'{max(spreads):.2f}×' if spreads else '–')} | {(f'{min(bounds):.1f}–{max(bounds):.1f}' if bounds else '–')} |"
            )
        lines += ["", "The whole-run table above compares two different runs (their old rows differ after the first switch): secondary."]
    lines += ["", "Per experience (mean over seeds): first mini-batch loss / accuracy on the classes seen so far.", ""]
    header = "| strategy | plugin | " + " | ".join(f"exp. {k + 1}" for k in range(args.experiences)) + " |"
    lines += [header, "|---|---|" + "---|" * args.experiences]
    for strategy in STRATEGIES:
        for p in (False, True):
            runs = [r for r in results if r["strategy"] == strategy and r["plugin"] == p]
            if not runs:
                continue
            losses = np.mean([r["first_losses"] for r in runs], axis=0)
            accs = np.mean([r["acc_seen"] for r in runs], axis=0)
            cells = " | ".join(f"{lo:.3f} / {a:.3f}" for lo, a in zip(losses, accs))
            lines.append(f"| {strategy} | {'with' if p else 'without'} | {cells} |")
    return "\n".join(lines) + "\n", figures


def plugin_options(parser, items):
    import ast

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            parser.error(f"--plugin {item!r}: expected KEY=VALUE")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return options


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", help="(N, d) features, .npy")
    p.add_argument("--labels", help="(N,) integer labels, .npy")
    p.add_argument("--name", help="the data set's name in the report")
    p.add_argument("--dim", type=int, default=512, help="feature dimension of the bundled digits' projection")
    p.add_argument("--l2", action="store_true", help="L2-normalise every feature vector")
    p.add_argument("--experiences", type=int, default=5)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument(
        "--iters",
        type=int,
        default=300,
        help="training iterations per experience, rounded up to whole epochs of the experience's data "
        "(300, as in docs/results.md's runs; 0: use --epochs)",
    )
    p.add_argument("--epochs", type=int, default=20, help="training epochs per experience when --iters is 0")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--replay-per-class", type=int, default=20, help="Replay's memory: this many samples per class")
    p.add_argument("--head", choices=("linear", "mlp"), default="linear")
    p.add_argument("--hidden", type=int, default=256, help="hidden width with --head mlp")
    p.add_argument("--strategies", default="naive,replay")
    p.add_argument("--probe-iters", type=int, default=100, help="same-state comparison: iterations from each switch (0: off)")
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a HeadstartPlugin option other than its default, e.g. --plugin persist=False --plugin "
        "calibrate=sample (values are Python literals, or strings)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", help="output folder (default experiments/out/avalanche-<name>)")
    args = p.parse_args(argv)
    if bool(args.features) != bool(args.labels):
        p.error("--features and --labels go together")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.plugin_options = plugin_options(p, args.plugin)
    name, x, y = load(args)
    out = args.out or os.path.join(HERE, "out", f"avalanche-{name}")
    os.makedirs(out, exist_ok=True)
    strategies = [s for s in args.strategies.split(",") if s]
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown:
        p.error(f"unknown strategies {unknown}; choose from {list(STRATEGIES)}")

    start = time.perf_counter()
    results = []
    total = len(strategies) * 2 * args.seeds
    for seed in range(args.seeds):
        for strategy in strategies:
            for with_plugin in (False, True):
                results.append(run(strategy, with_plugin, seed, x, y, args))
                r = results[-1]
                print(
                    f"[{len(results)}/{total}] {name} seed {seed} {strategy:6s} plugin={'on ' if with_plugin else 'off'} "
                    f"first losses {np.round(r['first_losses'], 3).tolist()} final acc {r['final_acc']:.3f} "
                    f"({r['train_seconds']:.1f} s{', plugin %.2f s' % r['plugin_seconds'] if with_plugin else ''})",
                    file=sys.stderr,
                    flush=True,
                )
    wall = time.perf_counter() - start
    summary, figures = summarise(name, results, args, wall)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"name": name, "args": vars(args), "figures": figures, "runs": results}, f, indent=1)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(summary)
    print(summary)


if __name__ == "__main__":
    main()
