#!/usr/bin/env python3
"""Class-incremental training of a classifier head on fixed features (a linear layer, or with
--head mlp a hidden ReLU layer under it), with six ways to initialise the rows of each task's
new classes:

  random    PyTorch's default initialisation of nn.Linear rows;
  means     class means of the task's training features, as the linear form of a
            nearest-class-mean classifier (w = mu, b = -|mu|^2 / 2), the SGM-style baseline;
  ls-task   headstart's nc head solved from the current task's statistics (scope "task");
  ls-all    headstart's nc head solved from every statistic seen so far (scope "all"),
            uncalibrated (logits of order 1/C);
  ls-cal    ls-all, calibrated: init_rows(..., calibrate=(x, y)) fits one scale for the new
            rows on a sample of --calib rows of the task's training data (a batch drawn apart
            from the first training batch, whose loss is the one reported at the switch);
  ls-stats  ls-all, calibrated from the statistics alone: init_rows(..., calibrate=stats)
            fits the scale on draws from the class-conditional Gaussian of every seen class;
  ls-stats-task  the same with stats_scope="task": draws of the current task's classes only.

λ is headstart's default (relative, scale-free) unless --lam gives another. --scale s multiplies
every feature by s for the whole run (training included). --scale-check S (default 100) measures
headstart's own scale-freedom at every switch of the LS starts: the same start is computed again
from features multiplied by S, joining the same layer reparametrised for them (old weights
divided by S, so that the layer's function is unchanged), and the relative change of the switch
loss is reported.

Old rows are kept (trainable unless --freeze-old). Each task trains for --iters iterations of
cross-entropy with AdamW over the classes seen so far, on the current task's data plus an
optional replay buffer (--replay per class; 0 = rehearsal-free, the default).

Usage:

    python experiments/class_incremental.py                       # bundled UCI digits
    python experiments/class_incremental.py --features F.npy --labels L.npy --tasks 5 --seeds 5

Writes results.json, summary.md, loss.png and accuracy.png into --out (default
experiments/out/<data name>). Needs numpy, torch, matplotlib and the headstart package
(`pip install ./python`).
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import os
import time

import numpy as np
import torch

import headstart
from headstart.torch import init_rows

METHODS = ("random", "means", "ls-task", "ls-all", "ls-cal", "ls-stats", "ls-stats-task")
LS_METHODS = ("ls-task", "ls-all", "ls-cal", "ls-stats", "ls-stats-task")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# ------------------------------------------------------------------------------ data


def bundled_digits(dim: int, seed: int = 7):
    """The bundled UCI digits (data/digits.csv.gz) through a seeded random ReLU projection to
    `dim` features, as `headstart demo` does (a stand-in for a backbone's features)."""
    with gzip.open(os.path.join(ROOT, "data", "digits.csv.gz"), "rt") as f:
        table = np.loadtxt(f, delimiter=",")
    pixels, labels = table[:, :64] / 8.0 - 1.0, table[:, 64].astype(np.int64)
    rng = np.random.default_rng(seed)
    projection = rng.standard_normal((64, dim)) / np.sqrt(64)
    return np.maximum(pixels @ projection, 0.0).astype(np.float32), labels


def load_data(args):
    if args.features:
        x = np.load(args.features).astype(np.float32)
        y = np.load(args.labels).astype(np.int64)
        if x.ndim != 2 or y.shape != (x.shape[0],):
            raise SystemExit(f"features {x.shape} and labels {y.shape} do not match")
        name = args.name or os.path.splitext(os.path.basename(args.features))[0]
    else:
        x, y = bundled_digits(args.dim)
        name = args.name or "digits"
    if args.l2:
        x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
        name = args.name or name + "-l2"
    return name, x * np.float32(args.scale), y


def split(y, test_fraction, rng):
    train, test = [], []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        n_test = int(round(len(members) * test_fraction))
        test.extend(members[:n_test])
        train.extend(members[n_test:])
    return np.array(sorted(train)), np.array(sorted(test))


# ------------------------------------------------------------------------------ one run


def init_new_rows(method, fc, new, x_task, y_task, stats, args, live, calib):
    """Writes the rows of the classes `new` (labels are already layer rows). Returns the fitted
    calibration scale (None where nothing was fitted)."""
    rows = torch.tensor(new)
    if method == "random":
        fresh = torch.nn.Linear(fc.in_features, len(new))  # PyTorch's default init
        with torch.no_grad():
            fc.weight[rows] = fresh.weight
            fc.bias[rows] = fresh.bias
        return None
    if method == "means":
        means = np.stack([x_task[y_task == c].mean(axis=0) for c in new])
        with torch.no_grad():
            fc.weight[rows] = torch.from_numpy(means).float()
            fc.bias[rows] = torch.from_numpy(-0.5 * (means**2).sum(axis=1)).float()
        return None
    scope = "task" if method == "ls-task" else "all"
    head = stats.solve(lam=args.lam, classes=list(new), scope=scope)
    calibrate = {"ls-cal": calib, "ls-stats": stats, "ls-stats-task": stats}.get(method)
    scope = "task" if method == "ls-stats-task" else "all"
    result = init_rows(
        fc, head, norm=args.norm, calibrate=calibrate, active=live, stats_scope=scope, bound=args.bound, reference=stats
    )
    return result.scale if calibrate is not None else None


def probe(starts, fc, body, new_rows, h_task, y_task, stats, args, live, calib, xs, ys, seed, t):
    """The same-state comparison at a switch: each start's rows are written into a copy of the
    one model state (fc, body), which then trains --probe-iters iterations on the same batches
    (those of the run itself). Returns {start: training losses at iterations 0..probe_iters}
    (iteration k's loss is the k-th batch's, before its update). The global RNG is left as it
    was, so probing does not change the run."""
    curves = {}
    for start in starts:
        with torch.random.fork_rng():
            torch.manual_seed(seed * 7727 + t)  # the random start's rows: the same for every run state
            fc_p, body_p = copy.deepcopy(fc), copy.deepcopy(body)
            init_new_rows(start, fc_p, new_rows, h_task, y_task, stats, args, live, calib)
            params = [fc_p.weight, fc_p.bias, *body_p.parameters()]
            opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
            gen = torch.Generator().manual_seed(seed * 1000 + t)
            losses = []
            for _ in range(args.probe_iters + 1):
                batch = torch.randint(0, len(ys), (min(args.batch, len(ys)),), generator=gen)
                loss = torch.nn.functional.cross_entropy(fc_p(body_p(xs[batch]))[:, live], ys[batch])
                losses.append(loss.item())
                opt.zero_grad()
                loss.backward()
                opt.step()
            curves[start] = losses
    return curves


def run(method, seed, x, y, args):
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    train_idx, test_idx = split(y, args.test_fraction, rng)
    order = rng.permutation(np.unique(y))
    tasks = np.array_split(order, args.tasks)
    col = {}  # class id -> row of the head, in order of arrival
    d = x.shape[1]
    if args.head == "mlp":
        # A trainable hidden layer under the classifier: headstart sees its activations, taken
        # at each switch (older statistics were taken under older weights, as they would be
        # in any rehearsal-free learner).
        body = torch.nn.Sequential(torch.nn.Linear(d, args.hidden), torch.nn.ReLU())
        width = args.hidden
    else:
        body = torch.nn.Identity()
        width = d
    fc = torch.nn.Linear(width, len(order))
    stats = headstart.Stats(width)
    check = args.scale_check > 0 and method in LS_METHODS and args.head == "linear"
    stats_scaled = headstart.Stats(width) if check else None
    seen: list = []
    replay_x, replay_y = np.zeros((0, d), np.float32), np.zeros(0, np.int64)
    log = {"loss": [], "acc": [], "task_start": [], "switch_loss": [], "after10": [], "after100": []}
    headstart_seconds = 0.0
    train_seconds = 0.0
    log["scales"] = []
    log["scale_check"] = []
    log["probes"] = []  # per switch: {start: losses from the same state}
    for t, new in enumerate(tasks):
        new = [int(c) for c in new]
        for c in new:
            col[c] = len(col)
        seen += new
        mask = np.isin(y[train_idx], new)
        x_task = x[train_idx][mask]
        y_task = np.array([col[int(c)] for c in y[train_idx][mask]], dtype=np.int64)  # layer rows
        new_rows = [col[c] for c in new]
        xs = torch.from_numpy(np.concatenate([x_task, replay_x]))
        ys_np = np.concatenate([y_task, replay_y])
        ys = torch.from_numpy(ys_np)
        live = torch.tensor([col[c] for c in seen])
        with torch.no_grad():
            h_task = body(torch.from_numpy(x_task)).numpy()
        # The calibration sample: a batch of the task's training data (replay included), drawn
        # apart from the training batches.
        pick = torch.randint(0, len(ys), (min(args.calib, len(ys)),), generator=torch.Generator().manual_seed(seed * 7919 + t))
        with torch.no_grad():
            calib = (body(xs[pick]), ys[pick])
        # Every run keeps the statistics (the probes need them); only LS runs are charged.
        started = time.perf_counter()
        if t > 0:
            if args.stats_policy == "rebuild":
                stats = headstart.Stats(width)
            elif args.stats_policy.startswith("decay:"):
                stats.decay(float(args.stats_policy.split(":", 1)[1]))
            stats.begin_task()
        stats.update(h_task, y_task)
        if method in LS_METHODS:
            headstart_seconds += time.perf_counter() - started
        if t > 0 and args.probe_iters > 0:
            log["probes"].append(probe(args.probe_list, fc, body, new_rows, h_task, y_task, stats, args, live, calib, xs, ys, seed, t))
        if check:
            # The same layer for features multiplied by S: old weights divided by S.
            S = args.scale_check
            fc_scaled = copy.deepcopy(fc)
            with torch.no_grad():
                fc_scaled.weight /= S
            if t > 0:
                stats_scaled.begin_task()
            stats_scaled.update(h_task * S, y_task)
        started = time.perf_counter()
        scale = init_new_rows(method, fc, new_rows, h_task, y_task, stats, args, live, calib)
        if scale is not None:
            log["scales"].append(scale)
        if method in LS_METHODS:
            headstart_seconds += time.perf_counter() - started
        if check and t > 0:
            scaled_calib = (calib[0] * S, calib[1])
            init_new_rows(method, fc_scaled, new_rows, h_task * S, y_task, stats_scaled, args, live, scaled_calib)
            first = torch.randint(0, len(ys), (min(args.batch, len(ys)),), generator=torch.Generator().manual_seed(seed * 1000 + t))
            with torch.no_grad():
                ce = torch.nn.functional.cross_entropy
                plain = float(ce(fc(xs[first])[:, live], ys[first]))
                scaled = float(ce(fc_scaled(xs[first] * S)[:, live], ys[first]))
            # Relative change; a loss that rounds to 0 in float32 counts its absolute change.
            log["scale_check"].append(abs(scaled - plain) / max(plain, 1e-6))
        started = time.perf_counter()
        params = [fc.weight, fc.bias, *body.parameters()]
        opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
        frozen = torch.tensor([col[c] for c in seen if c not in new])
        test_mask = np.isin(y[test_idx], seen)
        xt = torch.from_numpy(x[test_idx][test_mask])
        yt = torch.tensor([col[int(c)] for c in y[test_idx][test_mask]])
        log["task_start"].append(len(log["loss"]))
        gen = torch.Generator().manual_seed(seed * 1000 + t)
        for it in range(args.iters + 1):
            if it % args.eval_every == 0 or it == args.iters:
                with torch.no_grad():
                    logits = fc(body(xt))[:, live]
                    pred = live[logits.argmax(dim=1)]
                    log["acc"].append((len(log["loss"]), float((pred == yt).float().mean())))
            if it == args.iters:
                break
            batch = torch.randint(0, len(ys), (min(args.batch, len(ys)),), generator=gen)
            logits = fc(body(xs[batch]))
            # Cross-entropy over the classes seen so far (unseen rows take no part).
            target = ys[batch]  # rows are assigned in order of arrival, so live == arange
            loss = torch.nn.functional.cross_entropy(logits[:, live], target)
            value = loss.item()
            log["loss"].append(value)
            # The spike is measured at true switches: from the second task on.
            if it == 0 and t > 0:
                log["switch_loss"].append(value)
            if it == 10 and t > 0:
                log["after10"].append(value)
            if it == 100 and t > 0:
                log["after100"].append(value)
            opt.zero_grad()
            loss.backward()
            if args.freeze_old and len(frozen):
                fc.weight.grad[frozen] = 0
                fc.bias.grad[frozen] = 0
            opt.step()
        train_seconds += time.perf_counter() - started
        if args.replay:
            for c in new_rows:
                members = np.flatnonzero(y_task == c)[: args.replay]
                replay_x = np.concatenate([replay_x, x_task[members]])
                replay_y = np.concatenate([replay_y, y_task[members]])
    log["final_acc"] = log["acc"][-1][1]
    log["train_seconds"] = train_seconds
    log["headstart_seconds"] = headstart_seconds
    return log


# ------------------------------------------------------------------------------ reports


def iterations_to(log, threshold, tasks):
    """Per task: the first evaluated iteration (counted from the task's start) whose accuracy
    reaches `threshold[t]`; None if never."""
    out = []
    starts = log["task_start"] + [len(log["loss"]) + 1]
    for t in range(tasks):
        hits = [i - starts[t] for i, a in log["acc"] if starts[t] <= i < starts[t + 1] + 1 and a >= threshold[t]]
        out.append(hits[0] if hits else None)
    return out


def final_task_acc(log, tasks):
    """Accuracy at the end of each task."""
    starts = log["task_start"] + [10**12]
    return [[a for i, a in log["acc"] if starts[t] <= i < starts[t + 1]][-1] for t in range(tasks)]


def mean_std(values):
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if len(v) == 0:
        return "never"
    return f"{v.mean():.3f} ± {v.std():.3f}" if len(v) > 1 else f"{v.mean():.3f}"


def iterations_to_reach(curve, level, window=5):
    """The first iteration k whose trailing mean loss (over up to `window` batches) is at most
    `level`; None if the curve never gets there."""
    c = np.asarray(curve)
    for k in range(len(c)):
        if c[max(0, k - window + 1) : k + 1].mean() <= level:
            return k
    return None


def same_state(results, args):
    """Pools the probes of every run and seed: per start, the first-batch loss and the losses
    after 10 and 100 iterations over random rows' from the same state, and the iterations
    random rows need from that state to reach the start's first-batch loss."""
    rows = {}
    for start in args.probe_list:
        ratios = {0: [], 10: [], args.probe_iters: []}
        saved, censored, losses0, switches = [], 0, [], 0
        for m in args.method_list:
            for s in sorted(results[m]):
                for switch in results[m][s]["probes"]:
                    mine, rand = switch[start], switch["random"]
                    switches += 1
                    losses0.append(mine[0])
                    for k in ratios:
                        if k < len(mine):
                            ratios[k].append(mine[k] / rand[k])
                    need = iterations_to_reach(rand, mine[0])
                    if need is None:
                        censored += 1
                        need = len(rand)
                    saved.append(need)
        rows[start] = {
            "switches": switches,
            "loss0": float(np.mean(losses0)),
            "ratio0_mean": float(np.mean(ratios[0])),
            "ratio0_worst": float(np.max(ratios[0])),
            "above_random": int(sum(r > 1 for r in ratios[0])),
            "ratio10_mean": float(np.mean(ratios[10])) if ratios[10] else None,
            "ratio_end_mean": float(np.mean(ratios[args.probe_iters])) if ratios[args.probe_iters] else None,
            "random_iters_to_start_loss": float(np.mean(saved)),
            "censored": censored,
        }
    return rows


def scale_spread(scales):
    """The largest factor between a run's fitted scale at any switch and at its first."""
    if len(scales) < 2 or scales[0] <= 0:
        return None
    return max(max(v / scales[0], scales[0] / v) for v in scales if v > 0)


def report(name, results, args, out_dir, wall):
    seeds = sorted(results["random"])
    lines = [
        f"# {name}: {args.tasks} tasks, {args.iters} iterations per task, {len(seeds)} seeds",
        "",
        f"Command: `python experiments/class_incremental.py {' '.join(args.argv)}`",
        "",
    ]
    probes = same_state(results, args) if args.probe_iters > 0 else {}
    if probes:
        n = args.probe_iters
        lines += [
            f"## From the same state (every run's state at every switch; {probes['random']['switches']} switches)",
            "",
            f"| start | first-batch loss | ÷ random's (mean) | worst switch | above random's | ÷ random's after 10 it. | ÷ random's after {n} it. | it. random rows need to reach the start's first loss |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for start, r in probes.items():
            need = f"{r['random_iters_to_start_loss']:.1f}" + (f" ({r['censored']} never in {n})" if r["censored"] else "")
            tag = " (default)" if start == "ls-stats-task" else ""
            lines.append(
                f"| {start}{tag} | {r['loss0']:.3f} | {r['ratio0_mean']:.2f} | {r['ratio0_worst']:.2f} | "
                f"{r['above_random']}/{r['switches']} | {r['ratio10_mean']:.2f} | {r['ratio_end_mean']:.2f} | {need} |"
            )
        lines += [
            "",
            "At every switch of every whole run (each start's run, each seed), each start's rows are written into a "
            "copy of that run's model state, which then trains on the run's own batches. Ratios are per switch, "
            f"to random rows' loss on the same batch from the same state; 'worst switch' is the largest. The last "
            f"column: the first iteration at which random rows' trailing 5-batch mean loss reaches the start's "
            f"first-batch loss (counted as {n + 1} where it never does).",
            "",
            "## Whole runs",
            "",
        ]
    lines += [
        "| init | loss at switch (whole run) | ÷ random's run | switches above random's run | loss after 10 it. | loss after 100 it. | it. to 95% of random's acc. | final acc. | final acc. ≥ random's (seeds) | scale | scale spread | headstart share | switch loss change at features ×S |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    summary = {}
    for m in args.method_list:
        runs = [results[m][s] for s in seeds]
        per_seed = lambda key: [np.mean(r[key]) if r[key] else None for r in runs]  # noqa: E731
        reach = []
        for s in seeds:
            target = [0.95 * a for a in final_task_acc(results["random"][s], args.tasks)]
            hits = iterations_to(results[m][s], target, args.tasks)
            reach.append(np.mean([h if h is not None else args.iters for h in hits]))
        row = {
            "switch_loss": per_seed("switch_loss"),
            "after10": per_seed("after10"),
            "after100": per_seed("after100"),
            "iters_to_95": reach,
            "final_acc": [r["final_acc"] for r in runs],
            "train_seconds": [r["train_seconds"] for r in runs],
            "headstart_seconds": [r["headstart_seconds"] for r in runs],
            "headstart_share": [r["headstart_seconds"] / (r["headstart_seconds"] + r["train_seconds"]) for r in runs],
            "scales": [float(np.mean(r["scales"])) if r["scales"] else None for r in runs],
            "scale_check_max": max((v for r in runs for v in r["scale_check"]), default=None),
            "scale_spread": [scale_spread(r["scales"]) for r in runs],
        }
        random_switch = np.mean([np.mean(results["random"][s_]["switch_loss"]) for s_ in seeds])
        ratio = np.mean([np.mean(r["switch_loss"]) for r in runs]) / random_switch if random_switch else float("nan")
        above = sum(
            a > b for s_ in seeds for a, b in zip(results[m][s_]["switch_loss"], results["random"][s_]["switch_loss"])
        )
        switches = sum(len(results[m][s_]["switch_loss"]) for s_ in seeds)
        row["switch_ratio"], row["switches_above_random"] = float(ratio), int(above)
        summary[m] = row
        share = np.mean(row["headstart_share"])
        scale = mean_std(row["scales"]) if any(v is not None for v in row["scales"]) else "–"
        change = "–" if row["scale_check_max"] is None else f"{row['scale_check_max']:.1e}"
        spreads = [v for v in row["scale_spread"] if v is not None]
        spread = f"{max(spreads):.2f}×" if spreads else "–"
        wins = sum(r["final_acc"] >= results["random"][s_]["final_acc"] for r, s_ in zip(runs, seeds))
        row["final_acc_at_least_random"] = int(wins)
        lines.append(
            f"| {m} | {mean_std(row['switch_loss'])} | {ratio:.2f} | {above}/{switches} | {mean_std(row['after10'])} | "
            f"{mean_std(row['after100'])} | {mean_std(row['iters_to_95'])} | {mean_std(row['final_acc'])} | {wins}/{len(seeds)} | {scale} | "
            f"{spread} | {100 * share:.1f}% | {change} |"
        )
    lines += [
        "",
        "Losses are cross-entropy over the classes seen so far on one training batch of the current task, "
        "at the task switches (tasks 2 onwards; mean over tasks, then mean ± std over seeds); 'at switch' is "
        "the first batch after the new rows are initialised, before any update. Iterations to 95% count from "
        "each task's start, per task (all tasks), "
        f"evaluated every {args.eval_every} iterations ({args.iters} if never reached). Final accuracy: held-out data of all classes "
        "after the last task.",
        "'÷ random's' is the mean switch loss over the random rows' mean; 'switches above random's' counts the "
        "(seed, switch) pairs whose loss exceeds the random rows' loss at the same switch. 'scale' is the mean "
        "calibration factor fitted; 'scale spread' the largest factor, over runs, between a run's scale at any "
        "switch and at its first. These whole-run columns mix the start with the history (the runs hold different "
        "old rows after the first switch): the same-state table above isolates the start. 'headstart share' is headstart's time (statistics, solve, calibration) over "
        "headstart's plus the training loop's.",
        f"'switch loss change at features ×S' (S = {args.scale_check:g}): the largest relative change, over every "
        "switch and seed, of the switch loss when headstart's start is computed from features multiplied by S for "
        "the same layer reparametrised for them (old weights ÷ S); '–' where nothing is checked.",
        f"Wall time of the whole run: {wall:.1f} s.",
    ]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({"args": vars(args) | {"argv": args.argv}, "summary": summary, "same_state": probes, "runs": results}, f)
    print(text)
    plot(name, results, args, out_dir)


def plot(name, results, args, out_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {
        "random": "tab:gray",
        "means": "tab:orange",
        "ls-task": "tab:blue",
        "ls-all": "tab:green",
        "ls-cal": "tab:red",
        "ls-stats": "tab:purple",
        "ls-stats-task": "tab:brown",
    }
    seeds = sorted(results["random"])
    fig, ax = plt.subplots(figsize=(10, 4))
    for m in args.method_list:
        curves = np.array([results[m][s]["loss"] for s in seeds])
        mean = curves.mean(axis=0)
        k = max(1, args.smooth)
        smooth = np.convolve(mean, np.ones(k) / k, mode="valid") if k > 1 else mean
        ax.plot(np.arange(len(smooth)), smooth, label=m, color=colours[m], lw=1)
    for start in results["random"][seeds[0]]["task_start"][1:]:
        ax.axvline(start, color="k", lw=0.5, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("iteration (task switches dotted)")
    ax.set_ylabel("training cross-entropy")
    ax.set_title(f"{name}: training loss across tasks (mean of {len(seeds)} seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "loss.png"), dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, 4))
    for m in args.method_list:
        its = [i for i, _ in results[m][seeds[0]]["acc"]]
        accs = np.array([[a for _, a in results[m][s]["acc"]] for s in seeds]).mean(axis=0)
        ax.plot(its, accs, label=m, color=colours[m], lw=1.2)
    for start in results["random"][seeds[0]]["task_start"][1:]:
        ax.axvline(start, color="k", lw=0.5, ls=":")
    ax.set_xlabel("iteration (task switches dotted)")
    ax.set_ylabel("held-out accuracy, classes seen so far")
    ax.set_title(f"{name}: accuracy across tasks (mean of {len(seeds)} seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "accuracy.png"), dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", help=".npy features (N, d); default: the bundled digits")
    p.add_argument("--labels", help=".npy integer labels (N,)")
    p.add_argument("--dim", type=int, default=512, help="bundled digits: projected feature dimension")
    p.add_argument("--tasks", type=int, default=5)
    p.add_argument("--iters", type=int, default=300, help="training iterations per task")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--lam", default=None, help="headstart's lambda: rel (default), rel:R or an absolute number")
    p.add_argument("--calib", type=int, default=64, help="ls-cal: rows in the calibration sample")
    p.add_argument("--l2", action="store_true", help="L2-normalise every feature vector")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every feature by this factor")
    p.add_argument("--scale-check", type=float, default=100.0, help="LS starts: recompute each start at features x S (0: off)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    p.add_argument("--head", choices=("linear", "mlp"), default="linear", help="linear, or a hidden ReLU layer + linear")
    p.add_argument("--hidden", type=int, default=256, help="--head mlp: hidden width")
    p.add_argument("--norm", choices=("none", "match"), default="none", help="scale LS rows to the old rows' median norm")
    p.add_argument("--replay", type=int, default=0, help="replay samples kept per old class (0: rehearsal-free)")
    p.add_argument("--freeze-old", action="store_true", help="train only the new rows")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--probe-iters", type=int, default=100, help="same-state probes: iterations from each switch (0: off)")
    p.add_argument("--probes", help="starts compared from the same state (default: every --methods entry)")
    p.add_argument("--bound", choices=("typical", "max_logit"), default="typical", help="init_rows' calibration bound")
    p.add_argument(
        "--stats-policy",
        default="keep",
        help="at each switch: keep the statistics, rebuild them from the current task only, or decay:G (multiply by G)",
    )
    p.add_argument("--test-fraction", type=float, default=0.3)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--smooth", type=int, default=5, help="moving average of the plotted loss")
    p.add_argument("--name", help="the data's name in titles and the default output folder")
    p.add_argument("--out", help="output folder (default experiments/out/<data name>)")
    args = p.parse_args(argv)
    args.argv = argv if argv is not None else __import__("sys").argv[1:]
    if bool(args.features) != bool(args.labels):
        p.error("--features and --labels go together")
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(args.method_list) - set(METHODS))
    if unknown or "random" not in args.method_list:
        p.error(f"--methods: unknown {unknown} (choose from {', '.join(METHODS)}; random is the reference)")
    args.probe_list = [m.strip() for m in (args.probes or ",".join(args.method_list)).split(",") if m.strip()]
    if sorted(set(args.probe_list) - set(METHODS)) or "random" not in args.probe_list:
        p.error(f"--probes: choose from {', '.join(METHODS)}; random is the reference")
    if args.stats_policy not in ("keep", "rebuild") and not args.stats_policy.startswith("decay:"):
        p.error("--stats-policy: keep, rebuild or decay:G")
    if args.lam is not None and args.lam not in ("rel", "auto") and not args.lam.startswith("rel:"):
        args.lam = float(args.lam)
    torch.set_num_threads(1)
    started = time.perf_counter()
    name, x, y = load_data(args)
    out_dir = args.out or os.path.join(HERE, "out", name)
    os.makedirs(out_dir, exist_ok=True)
    print(f"{name}: {x.shape[0]} samples, {x.shape[1]} features, {len(np.unique(y))} classes; {args.tasks} tasks")
    results = {m: {} for m in args.method_list}
    for seed in range(args.seeds):
        for m in args.method_list:
            results[m][seed] = run(m, seed, x, y, args)
        print(
            f"seed {seed}: final accuracy "
            + ", ".join(f"{m} {results[m][seed]['final_acc']:.3f}" for m in args.method_list)
            + f" ({time.perf_counter() - started:.1f} s)",
            flush=True,
        )
    report(name, results, args, out_dir, time.perf_counter() - started)


if __name__ == "__main__":
    main()
