"""Figures for headstart.ray: one process against Ray workers, on the same Parquet dataset.

    python python/bench_ray.py [--rows 400000] [--dim 384] [--files 8] [--workers 2] [--runs 3]

Writes ROWS x DIM float32 rows (a fixed_size_list column "emb", an int32 column "label",
100 classes) as FILES Parquet files in a temporary folder (or --dir), then runs, interleaved,
RUNS times each:

  * one process: each file read with pyarrow (`pq.read_table`) and added with
    `Stats.update_table` (threads: every core); reported with and without the reading;
  * `headstart.ray.accumulate` on `ray.init(num_cpus=WORKERS)` over
    `ray.data.read_parquet` (one task per block, one thread each), with the driver's merge
    time reported on its own;

and prints each run and the medians (samples/s). The first Ray call starts Ray's workers; it
is run once, untimed, before the runs. Needs pyarrow, ray[data] and the installed package
(`pip install ./python`); run it from the repository root.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

# This script sits next to the package's source (python/headstart, without its native module):
# take the installed package, here and in Ray's workers (Ray gives the workers the script's
# folder only if it is on this sys.path, and the current folder: run from elsewhere than python/).
_HERE = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _HERE]

import numpy as np  # noqa: E402

import headstart  # noqa: E402


def write_dataset(root, rows, dim, files, classes=100, seed=0):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    per_file = -(-rows // files)
    written = 0
    for f in range(files):
        n = min(per_file, rows - written)
        x = rng.standard_normal((n, dim), dtype=np.float32)
        y = rng.integers(0, classes, size=n).astype(np.int32)
        emb = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dim)
        pq.write_table(pa.table({"emb": emb, "label": y}), os.path.join(root, f"part-{f:03d}.parquet"), row_group_size=25_000)
        written += n
    return written


def single_process(root, dim):
    import pyarrow.parquet as pq

    stats = headstart.Stats(dim)
    update_s = 0.0
    start = time.perf_counter()
    for name in sorted(os.listdir(root)):
        table = pq.read_table(os.path.join(root, name))
        t = time.perf_counter()
        stats.update_table(table, "emb", "label")
        update_s += time.perf_counter() - t
    return stats, time.perf_counter() - start, update_s


def with_ray(root, dim, fan_in):
    import ray
    import headstart.ray

    timings = {}
    start = time.perf_counter()
    stats = headstart.ray.accumulate(ray.data.read_parquet(root), "emb", "label", dim, fan_in=fan_in, timings=timings)
    return stats, time.perf_counter() - start, timings


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="ray.init(num_cpus=WORKERS)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--fan-in", type=int, default=8)
    parser.add_argument("--dir", help="write the dataset here (default: a temporary folder, removed)")
    args = parser.parse_args()

    import ray

    root = args.dir or tempfile.mkdtemp(prefix="headstart-bench-ray-")
    os.makedirs(root, exist_ok=True)
    try:
        t = time.perf_counter()
        rows = write_dataset(root, args.rows, args.dim, args.files)
        size = sum(os.path.getsize(os.path.join(root, n)) for n in os.listdir(root))
        print(f"dataset: {rows} rows x d={args.dim} float32 in {args.files} Parquet files, "
              f"{size / 2**20:.0f} MiB, written in {time.perf_counter() - t:.1f} s", flush=True)

        t = time.perf_counter()
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        print(f"ray.init(num_cpus={args.workers}): {time.perf_counter() - t:.1f} s", flush=True)
        t = time.perf_counter()
        with_ray(root, args.dim, args.fan_in)  # starts the workers; untimed
        print(f"warm-up accumulate (worker start): {time.perf_counter() - t:.1f} s", flush=True)

        single, single_update, distributed, merge, partials = [], [], [], [], []
        reference = None
        for run in range(args.runs):
            stats, wall, update_s = single_process(root, args.dim)
            single.append(rows / wall)
            single_update.append(rows / update_s)
            reference = stats
            print(f"run {run + 1}: one process  {wall:6.2f} s  {rows / wall:10.0f} samples/s "
                  f"(update alone {update_s:.2f} s, {rows / update_s:.0f} samples/s)", flush=True)
            stats, wall, timings = with_ray(root, args.dim, args.fan_in)
            distributed.append(rows / wall)
            merge.append(timings["merge_s"])
            partials.append(timings["partials"])
            parts, want = stats._parts()["task"], reference._parts()["task"]
            err = max(
                np.abs(parts[k] - want[k]).max() / np.abs(want[k]).max() for k in ("gram_lower", "sum", "class_sums")
            )
            assert stats.n == reference.n == rows and err < 1e-12, err
            print(f"run {run + 1}: ray x{args.workers}      {wall:6.2f} s  {rows / wall:10.0f} samples/s "
                  f"(merge {timings['merge_s'] * 1e3:.1f} ms of {timings['partials']} partials; "
                  f"max rel. diff to one process {err:.1e})", flush=True)

        med = statistics.median
        print(f"\nmedians of {args.runs} runs, {rows} rows x d={args.dim}:")
        print(f"  one process (read + update):  {med(single):10.0f} samples/s")
        print(f"  one process (update alone):   {med(single_update):10.0f} samples/s")
        print(f"  ray, {args.workers} workers:               {med(distributed):10.0f} samples/s "
              f"(merge {med(merge) * 1e3:.1f} ms, {int(med(partials))} partials)")
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
