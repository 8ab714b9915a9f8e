#!/usr/bin/env python3
"""Side-by-side throughput of the random-feature update: `headstart bench --expand M` against
numpy's `Z = np.maximum(X @ R, 0); G += Z.T @ Z`, with the same threads (every core by
default), at d = 768, B = 4096.

Every configuration runs `--repeats` times, interleaved, each in its own process; the table
gives medians, the spread (min..max), the ratio of medians and peak memory. `fast` is float32
products on both sides (numpy: float32 X and R, float32 Z.T @ Z added into a float64 G);
`exact` is float64 on both. numpy's children never see OPENBLAS_CORETYPE or OPENBLAS_L2_SIZE,
and print the BLAS kernel threadpoolctl reports. Also reports the solve at --solve-m
(`headstart bench --solve --expand`): time and peak memory.

Usage (from the repository root, after `cargo build --release`):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python3 benches/expand.py
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.path.join(ROOT, "target", "release", "headstart")

NUMPY_CHILD = r"""
import json, os, sys, time, resource
import numpy as np
d, m, b, batches, exact, seconds = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]),
                                    sys.argv[5] == "exact", float(sys.argv[6]))
dtype = np.float64 if exact else np.float32
rng = np.random.default_rng(0)
r = rng.standard_normal((d, m)).astype(dtype)
pool = [rng.uniform(-1, 1, (b, d)).astype(dtype) for _ in range(batches)]
g = np.zeros((m, m))
for x in pool[:1]:                      # warm-up
    z = np.maximum(x @ r, 0)
    g += z.T @ z
done, start = 0, time.perf_counter()
while time.perf_counter() - start < seconds:
    x = pool[done % batches]
    z = np.maximum(x @ r, 0)
    g += z.T @ z
    done += 1
elapsed = time.perf_counter() - start
kernel = "unknown"
try:
    from threadpoolctl import threadpool_info
    info = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    kernel = ", ".join(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')} x{i.get('num_threads')}" for i in info)
except ImportError:
    pass
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"rate": done * b / elapsed, "rss": rss, "kernel": kernel, "state": g.nbytes}))
"""


def numpy_env():
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    env.pop("OPENBLAS_L2_SIZE", None)
    return env


def run_numpy(args, m, precision):
    out = subprocess.run(
        [sys.executable, "-c", NUMPY_CHILD, str(args.dim), str(m), str(args.batch), str(args.pool), precision,
         str(args.seconds)],
        capture_output=True, text=True, env=numpy_env(), check=True,
    )
    return json.loads(out.stdout)


def run_headstart(args, m, precision, samples):
    out = subprocess.run(
        [BIN, "bench", "--dim", str(args.dim), "--batch", str(args.batch), "--expand", str(m), "--precision",
         precision, "--samples", str(samples)],
        capture_output=True, text=True, check=True,
    ).stdout
    rate = float(re.search(r"throughput: (\d+) samples/s", out).group(1))
    mem = re.search(r"peak RSS ([\d.]+) MiB = pool ([\d.]+) MiB \+ ([\d.]+) MiB other; state ([\d.]+) MiB", out)
    rss, pool, other, state = (float(v) for v in mem.groups())
    return {"rate": rate, "rss": rss * 2**20, "pool": pool * 2**20, "state": state * 2**20}


def spread(values):
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}..{max(values):,.0f})"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--m", type=lambda s: [int(v) for v in s.split(",")], default=[4096, 8192])
    p.add_argument("--precisions", default="fast,exact")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8.0, help="numpy's timed part per run")
    p.add_argument("--pool", type=int, default=4, help="numpy's batches (cycled)")
    p.add_argument("--solve-m", type=int, default=16384, help="0: no solve")
    args = p.parse_args()
    print(f"machine: {os.cpu_count()} CPUs; d={args.dim} B={args.batch}; {args.repeats} interleaved runs each")
    rows = []
    for precision in args.precisions.split(","):
        for m in args.m:
            ours, theirs = [], []
            for _ in range(args.repeats):
                n = run_numpy(args, m, precision)
                theirs.append(n)
                # About as many seconds as numpy's part, at numpy's rate.
                samples = max(args.batch * 2, int(n["rate"] * args.seconds))
                ours.append(run_headstart(args, m, precision, samples))
            rate_ours = [r["rate"] for r in ours]
            rate_np = [r["rate"] for r in theirs]
            ratio = statistics.median(rate_ours) / statistics.median(rate_np)
            peak = statistics.median([(r["rss"] - r["pool"]) / r["state"] for r in ours])
            rows.append((precision, m, spread(rate_ours), spread(rate_np), ratio, peak,
                         statistics.median([r["state"] for r in ours]) / 2**20, theirs[0]["kernel"]))
            print(rows[-1], flush=True)
    print()
    print("| precision | M | headstart samples/s | numpy samples/s | ratio | peak RSS − pool, × state | state MiB |")
    print("|---|---|---|---|---|---|---|")
    for precision, m, a, b, ratio, peak, state, _ in rows:
        print(f"| {precision} | {m} | {a} | {b} | {ratio:.2f}× | {peak:.2f}× | {state:.0f} |")
    print()
    print("numpy's BLAS (threadpoolctl):", rows[0][7] if rows else "-")
    if args.solve_m:
        out = subprocess.run(
            [BIN, "bench", "--solve", "--dim", str(args.dim), "--expand", str(args.solve_m), "--batch", "4096",
             "--repeat", "3", "--precision", "fast"],
            capture_output=True, text=True, check=True,
        ).stdout
        print()
        print(f"solve at M = {args.solve_m} (factor + solve, 100 classes, 3 runs):")
        print(out.strip())


if __name__ == "__main__":
    main()
