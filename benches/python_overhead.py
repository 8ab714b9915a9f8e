#!/usr/bin/env python3
"""Overhead of `headstart.Stats.update` called from Python against the Rust update.

Both sides update a fresh exact-precision state with the same shapes (float32 batches of
B × d, C = 100 classes) cycled from a pool of the same size: Python through `Stats.update`,
Rust through `headstart bench --direct` (`Stats::update` in a loop, no pipeline). Runs are
interleaved; the table shows medians with (min..max).

    python benches/python_overhead.py target/release/headstart [--dim 768] [--batch 4096] [--repeats 5]
"""

import argparse
import re
import statistics
import subprocess
import time

import numpy as np

import headstart


def python_rate(pool, batches, dim):
    s = headstart.Stats(dim)
    start = time.perf_counter()
    for i in range(batches):
        x, y = pool[i % len(pool)]
        s.update(x, y)
    return batches * len(pool[0][1]) / (time.perf_counter() - start)


def rust_rate(binary, dim, batch, samples, pool_mib):
    out = subprocess.run(
        [binary, "bench", "--direct", "--dim", str(dim), "--batch", str(batch), "--samples", str(samples),
         "--pool-mib", str(pool_mib)],
        check=True, capture_output=True, text=True,
    ).stdout
    return float(re.search(r"^throughput: ([0-9.]+)", out, re.M).group(1))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("binary")
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--pool", type=int, default=16, help="distinct batches, cycled")
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    rng = np.random.default_rng(1)
    pool = [
        (rng.uniform(-1, 1, size=(a.batch, a.dim)).astype(np.float32), rng.integers(0, 100, a.batch))
        for _ in range(a.pool)
    ]
    pool_mib = a.pool * a.batch * (a.dim * 4 + 8) / 2**20
    py, rs = [], []
    for _ in range(a.repeats):
        py.append(python_rate(pool, a.batches, a.dim))
        rs.append(rust_rate(a.binary, a.dim, a.batch, a.batches * a.batch, pool_mib))
    fmt = lambda v: f"{statistics.median(v) / 1e3:.1f}k ({min(v) / 1e3:.1f}..{max(v) / 1e3:.1f})"  # noqa: E731
    print(f"d={a.dim} B={a.batch}, {a.batches} batches per run from a pool of {a.pool} ({pool_mib:.0f} MiB), {a.repeats} interleaved runs")
    print(f"Python Stats.update : {fmt(py)} samples/s")
    print(f"Rust Stats::update  : {fmt(rs)} samples/s")
    print(f"Python / Rust       : {statistics.median(py) / statistics.median(rs):.3f}")


if __name__ == "__main__":
    main()
