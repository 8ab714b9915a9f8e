#!/usr/bin/env python3
"""Side-by-side throughput: `headstart bench` against numpy's `G += X.T @ X`.

Every configuration is run `--repeats` times, interleaved, each in its own process with its
own batch pool larger than the last-level cache; the tables show medians, the spread
(min..max) and the ratios of medians. Sections:

- update: `headstart bench` with no thread flags (every core) against numpy with its default
  BLAS threads, and `bench --direct --threads 1` (one thread in all, layout included) against
  numpy with one thread;
- python: `headstart.Stats.update` (default threads) against numpy's `G += X.T @ X` on the
  same C-contiguous batches, in the same process (needs the headstart package);
- busy: the update and python defaults again while a busy loop holds one core;
- pipeline, solve, memory: the pipeline's overhead, solve latency, peak memory;
- fit: `headstart fit` on a 2 GiB float32 .npy file (in the page cache) against `bench` at
  the same d;
- serve: `headstart serve` fed by four `headstart push` processes over loopback (d = 384),
  with the default window and with stop-and-wait (`--window 1`), against `bench`;
- tls: the same load (four pushes, and one), plaintext against TLS with tokens, interleaved.

Usage (from the repository root, after `cargo build --release`):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python3 benches/compare.py

The numpy child processes never see OPENBLAS_CORETYPE or OPENBLAS_L2_SIZE (they make
OpenBLAS pick a slow kernel on some machines); the kernel OpenBLAS chose is printed via
threadpoolctl when it is installed. Needs numpy; scipy (optional) adds the solve table.
"""

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MIB = 1024 * 1024


def last_level_cache_bytes():
    best = 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        entries = os.listdir(base)
    except OSError:
        return 0
    for entry in entries:
        try:
            with open(os.path.join(base, entry, "size")) as f:
                text = f.read().strip()
        except OSError:
            continue
        m = re.fullmatch(r"(\d+)([KMG]?)", text)
        if m:
            best = max(best, int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2)])
    return best


def numpy_env(threads):
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    env.pop("OPENBLAS_L2_SIZE", None)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    return env


# ---------------------------------------------------------------- the numpy child process


def numpy_worker(spec):
    """Runs in a child process: the numpy update on a cycled pool; prints JSON."""
    import numpy as np

    d, b, n, classes = spec["dim"], spec["batch"], spec["samples"], spec["classes"]
    dtype = np.float64 if spec["dtype"] == "f64" else np.float32
    batch_bytes = b * d * np.dtype(dtype).itemsize + b * 8
    count = max(1, int(-(-spec["pool_bytes"] // batch_bytes)))
    rng = np.random.default_rng(spec["seed"])
    pool = []
    for _ in range(count):
        x = rng.random((b, d), dtype=np.float32) * 2 - 1
        pool.append((x.astype(dtype, copy=False), rng.integers(0, classes, b)))
    g = np.zeros((d, d), dtype=dtype)
    sums = np.zeros((classes, d), dtype=np.float64)
    counts = np.zeros(classes, dtype=np.int64)
    batches = -(-n // b)
    with_sums = spec["with_sums"]
    start = time.perf_counter()
    for i in range(batches):
        x, y = pool[i % count]
        g += x.T @ x  # numpy runs this as one syrk
        if with_sums:
            order = np.argsort(y, kind="stable")
            ys = y[order]
            starts = np.flatnonzero(np.r_[True, ys[1:] != ys[:-1]])
            sums[ys[starts]] += np.add.reduceat(x[order], starts, axis=0)
            counts += np.bincount(y, minlength=classes)
    elapsed = time.perf_counter() - start
    kernel = "unknown (threadpoolctl not installed)"
    try:
        from threadpoolctl import threadpool_info

        info = [i for i in threadpool_info() if i.get("user_api") == "blas"]
        if info:
            i = info[0]
            kernel = f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')}, {i.get('num_threads')} threads"
    except ImportError:
        pass
    print(json.dumps({"throughput": batches * b / elapsed, "kernel": kernel}))


def python_worker(spec):
    """Child process: headstart.Stats.update and numpy's G += X.T @ X on the same float32
    batches, interleaved batch pools of the same size; prints JSON."""
    import numpy as np

    import headstart

    d, b, n, classes = spec["dim"], spec["batch"], spec["samples"], spec["classes"]
    count = max(1, int(-(-spec["pool_bytes"] // (b * d * 4 + b * 8))))
    rng = np.random.default_rng(spec["seed"])
    pool = [((rng.random((b, d), dtype=np.float32) * 2 - 1), rng.integers(0, classes, b)) for _ in range(count)]
    exact = spec["precision"] == "exact"
    numpy_pool = [(x.astype(np.float64) if exact else x) for x, _ in pool]
    batches = -(-n // b)
    stats = headstart.Stats(d, precision=spec["precision"])
    start = time.perf_counter()
    for i in range(batches):
        x, y = pool[i % count]
        stats.update(x, y)
    hs = batches * b / (time.perf_counter() - start)
    g = np.zeros((d, d), dtype=np.float64 if exact else np.float32)
    start = time.perf_counter()
    for i in range(batches):
        x = numpy_pool[i % count]
        g += x.T @ x
    npy = batches * b / (time.perf_counter() - start)
    print(json.dumps({"headstart": hs, "numpy": npy}))


def fit_worker(spec):
    """Child process: the careful numpy equivalent of `headstart fit` on a .npy pair: the
    features memory-mapped and streamed 4096 rows at a time (converted to float64 a chunk at
    a time), G += X.T @ X, per-class sums, then the LS head of Eq. 3 solved by Cholesky and
    saved. Prints the wall time and this process's peak RSS."""
    import numpy as np
    from scipy.linalg import cho_factor, cho_solve

    started = time.perf_counter()
    x = np.load(spec["features"], mmap_mode="r")
    y = np.load(spec["labels"])
    n, d = x.shape
    g = np.zeros((d, d))
    classes = np.unique(y)
    sums = np.zeros((len(classes), d))
    slots = np.searchsorted(classes, y)
    counts = np.bincount(slots, minlength=len(classes))
    for start in range(0, n, 4096):
        chunk = np.asarray(x[start:start + 4096], dtype=np.float64)
        g += chunk.T @ chunk
        s = slots[start:start + 4096]
        order = np.argsort(s, kind="stable")
        ss = s[order]
        firsts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
        sums[ss[firsts]] += np.add.reduceat(chunk[order], firsts, axis=0)
    means = sums / counts[:, None]
    mu = sums.sum(axis=0) / n
    c = len(classes)
    factor = cho_factor(g / n + spec["lam"] * np.eye(d))
    w = cho_solve(factor, means.T).T / c
    b = 1.0 / c - w @ mu
    np.savez(spec["out"], weight=w.astype(np.float32), bias=b.astype(np.float32))
    elapsed = time.perf_counter() - started
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": elapsed, "rss_mib": rss}))


def solve_worker(spec):
    """Child process: median of scipy cho_factor + cho_solve on a d×d SPD matrix, C columns."""
    import numpy as np
    from scipy.linalg import cho_factor, cho_solve

    d, c, repeats = spec["dim"], spec["classes"], spec["repeat"]
    rng = np.random.default_rng(spec["seed"])
    rows = max(2 * d, 4 * c, 4096)
    x = rng.random((rows, d)) * 2 - 1
    a = x.T @ x / rows + spec["lambda"] * np.eye(d)
    rhs = rng.random((d, c))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        factor = cho_factor(a, lower=True)
        w = cho_solve(factor, rhs)
        times.append(time.perf_counter() - start)
        assert np.isfinite(w).all()
    print(json.dumps({"seconds": statistics.median(times)}))


def child(kind, spec, threads):
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--worker", kind, json.dumps(spec)],
        env=numpy_env(threads),
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- headstart runs


def children_cpu():
    """CPU seconds (user + system) of every waited-for child process so far."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def process_cpu(pid):
    """CPU seconds (user + system) a running process has used, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def headstart(binary, args):
    before = children_cpu()
    out = subprocess.run([binary, "bench", *map(str, args)], check=True, capture_output=True, text=True)
    cpu = children_cpu() - before
    text = out.stdout
    thr = re.search(r"^throughput: ([0-9.]+) samples/s", text, re.M)
    rss = re.search(r"peak RSS ([0-9.]+) MiB = pool ([0-9.]+) MiB .*state ([0-9.]+) MiB", text)
    gf = re.search(r"^gflops: ([0-9.]+) GFLOP/s", text, re.M)
    solve = re.search(r"^solve: ([0-9.]+) ms median", text, re.M)
    return {
        "throughput": float(thr.group(1)) if thr else None,
        "gflops": float(gf.group(1)) if gf else None,
        "rss_mib": float(rss.group(1)) if rss else None,
        "pool_mib": float(rss.group(2)) if rss else None,
        "state_mib": float(rss.group(3)) if rss else None,
        "solve_ms": float(solve.group(1)) if solve else None,
        "cpu_s": cpu,
    }


def fmt_rate(values):
    med = statistics.median(values)
    return f"{med / 1e3:.1f}k ({min(values) / 1e3:.1f}..{max(values) / 1e3:.1f})"


def samples_for(dim, batch, seconds):
    # Aim at `seconds` per run at about 60 GFLOP/s; at least 8 batches.
    n = int(seconds * 60e9 / (dim * (dim + 1)))
    return max(8 * batch, -(-n // batch) * batch)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "headstart"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="target length of one run")
    parser.add_argument("--dims", default="384,768,2048")
    parser.add_argument("--small-batch", type=int, default=256)
    parser.add_argument("--sections", default="update,python,busy,pipeline,solve,memory,fit,serve,tls")
    parser.add_argument("--scratch", default=None, help="directory for the fit/serve input files (default: a temporary one)")
    parser.add_argument("--fit-gib", type=float, default=2.0, help="size of the fit section's .npy file")
    parser.add_argument("--pool-mib", type=float, default=None, help="default: 1.25 x last-level cache")
    args = parser.parse_args()
    if args.worker:
        kind, spec = args.worker
        {"update": numpy_worker, "python": python_worker, "solve": solve_worker, "fit": fit_worker}[kind](json.loads(spec))
        return

    if not os.path.exists(args.binary):
        sys.exit(f"{args.binary} not found: run `cargo build --release` first")
    llc = last_level_cache_bytes()
    pool_bytes = int(args.pool_mib * MIB) if args.pool_mib else max(int(1.25 * llc), 64 * MIB)
    dims = [int(d) for d in args.dims.split(",")]
    sections = args.sections.split(",")
    threads = os.cpu_count() or 1
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if var in os.environ:
            print(f"note: {var}={os.environ[var]} is set here; the numpy children run without it")
    print(f"machine: {threads} CPUs, last-level cache {llc / MIB:.0f} MiB; pool per run {pool_bytes / MIB:.0f} MiB")
    print(f"repeats: {args.repeats}, interleaved; medians with (min..max)\n")

    if "update" in sections:
        configs = []
        for d in dims:
            configs.append(("exact", "f64", d, 4096))
        for d in dims:
            configs.append(("fast", "f32", d, 4096))
        for d in dims:
            configs.append(("exact", "f64", d, args.small_batch))
        results = {c: {"hs": [], "hs1": [], "np1": [], "npk": [], "np1s": []} for c in configs}
        kernel = None
        for rep in range(args.repeats):
            for cfg in configs:
                precision, dtype, d, b = cfg
                n = samples_for(d, b, args.seconds)
                pool_mib = pool_bytes / MIB
                common = ["--dim", d, "--batch", b, "--samples", n, "--precision", precision, "--pool-mib", pool_mib]
                r = headstart(args.binary, common)
                results[cfg]["hs"].append(r["throughput"])
                r1 = headstart(args.binary, common + ["--direct", "--threads", 1])
                results[cfg]["hs1"].append(r1["throughput"])
                spec = dict(dim=d, batch=b, samples=n, classes=100, dtype=dtype, seed=rep, pool_bytes=pool_bytes)
                one = child("update", dict(spec, with_sums=False), 1)
                results[cfg]["np1"].append(one["throughput"])
                full = child("update", dict(spec, with_sums=False), threads)
                kernel = full["kernel"]
                results[cfg]["npk"].append(full["throughput"])
                results[cfg]["np1s"].append(child("update", dict(spec, with_sums=True), 1)["throughput"])
                print(f"  run {rep + 1}/{args.repeats} {precision:5} d={d:4} B={b:4}: headstart {r['throughput'] / 1e3:.1f}k/s, "
                      f"numpy {threads}T {full['throughput'] / 1e3:.1f}k/s", file=sys.stderr)
        print(f"numpy kernel (threadpoolctl): {kernel}")
        print("\n## Update throughput (samples/s, f32 batches)\n")
        print(f"headstart default: `headstart bench` with no thread flags (1 producer, 1 reducer whose product runs on "
              f"every core: {threads} threads). headstart 1T: `--direct --threads 1`, the layout and the product on one "
              f"thread. numpy: `G += X.T @ X` on {'{'}float64|float32{'}'} batches, its default {threads} BLAS threads or 1; "
              "+sums adds per-class sums (argsort + reduceat).\n")
        print(f"| mode | numpy dtype | d | B | headstart default | numpy {threads}T | default / {threads}T "
              "| headstart 1T | numpy 1T | numpy 1T +sums | 1T / 1T |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for cfg in configs:
            precision, dtype, d, b = cfg
            r = results[cfg]
            hs, h1, n1, nk = (statistics.median(r[k]) for k in ("hs", "hs1", "np1", "npk"))
            print(f"| {precision} | {dtype} | {d} | {b} | {fmt_rate(r['hs'])} | {fmt_rate(r['npk'])} | {hs / nk:.2f}x | "
                  f"{fmt_rate(r['hs1'])} | {fmt_rate(r['np1'])} | {fmt_rate(r['np1s'])} | {h1 / n1:.2f}x |")
        sys.stdout.flush()

    if "python" in sections:
        print(f"\n## Python `Stats.update` against numpy in one process and the CLI bench (samples/s, B=4096, "
              f"float32 C-contiguous batches)\n")
        print(f"numpy gets float64 copies of the batches for `exact` (converted before the clock starts) and the float32 "
              f"batches for `fast`; both with its default {threads} BLAS threads. The bench is `headstart bench` at "
              f"the same d, B, precision and pool size, run between the Python runs.\n")
        print(f"| mode | d | headstart.Stats.update | numpy {threads}T | vs numpy | `headstart bench` | vs bench |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for precision in ("exact", "fast"):
            for d in dims:
                hs, nps, bench = [], [], []
                n = samples_for(d, 4096, args.seconds)
                for rep in range(args.repeats):
                    spec = dict(dim=d, batch=4096, samples=n, classes=100, precision=precision, seed=rep,
                                pool_bytes=pool_bytes)
                    out = child("python", spec, threads)
                    hs.append(out["headstart"])
                    nps.append(out["numpy"])
                    bench.append(headstart(args.binary, ["--dim", d, "--batch", 4096, "--samples", n, "--precision",
                                                         precision, "--pool-mib", pool_bytes / MIB])["throughput"])
                h = statistics.median(hs)
                print(f"| {precision} | {d} | {fmt_rate(hs)} | {fmt_rate(nps)} | {h / statistics.median(nps):.2f}x | "
                      f"{fmt_rate(bench)} | {h / statistics.median(bench):.2f}x |")
                sys.stdout.flush()

    if "busy" in sections:
        d = 768
        n = samples_for(d, 4096, args.seconds)
        print(f"\n## With a busy loop holding one core (d={d}, B=4096, exact, samples/s)\n")
        print("| path | quiet | busy | busy / quiet |")
        print("|---|---:|---:|---:|")
        rows = {"headstart bench (default)": ([], []), f"numpy {threads}T (float64)": ([], []),
                "headstart.Stats.update (default)": ([], []), f"numpy {threads}T in the same process": ([], [])}
        names = list(rows)
        for rep in range(args.repeats):
            for busy in (False, True):
                hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
                try:
                    time.sleep(0.2 if busy else 0)
                    k = 1 if busy else 0
                    rows[names[0]][k].append(headstart(args.binary, ["--dim", d, "--samples", n, "--pool-mib", pool_bytes / MIB])["throughput"])
                    spec = dict(dim=d, batch=4096, samples=n, classes=100, dtype="f64", seed=rep, pool_bytes=pool_bytes)
                    rows[names[1]][k].append(child("update", dict(spec, with_sums=False), threads)["throughput"])
                    out = child("python", dict(dim=d, batch=4096, samples=n, classes=100, precision="exact", seed=rep,
                                               pool_bytes=pool_bytes), threads)
                    rows[names[2]][k].append(out["headstart"])
                    rows[names[3]][k].append(out["numpy"])
                finally:
                    if hog:
                        hog.kill()
                        hog.wait()
        for name, (quiet, busy) in rows.items():
            print(f"| {name} | {fmt_rate(quiet)} | {fmt_rate(busy)} | {statistics.median(busy) / statistics.median(quiet):.2f} |")
        sys.stdout.flush()

    if "pipeline" in sections:
        d = 768
        n = samples_for(d, 4096, args.seconds)
        common = ["--dim", d, "--samples", n, "--pool-mib", pool_bytes / MIB]
        runs = {
            "direct, 1 thread (Stats::update)": ["--direct", "--threads", 1],
            "direct, every core": ["--direct"],
            "pipeline, 1 producer (the default)": [],
            "pipeline, 2 producers": ["--producers", 2],
            "pipeline, 2 producers, 2 reducer shards": ["--producers", 2, "--reducers", 2],
        }
        runs = {name: (extra, []) for name, extra in runs.items()}
        for _ in range(args.repeats):
            for name, (extra, values) in runs.items():
                values.append(headstart(args.binary, common + extra)["throughput"])
        base = statistics.median(runs["direct, 1 thread (Stats::update)"][1])
        runs = {name: values for name, (_, values) in runs.items()}
        print(f"\n## Pipeline overhead (d={d}, B=4096, exact, samples/s)\n")
        print("| path | samples/s | vs direct, 1 thread |")
        print("|---|---:|---:|")
        for name, values in runs.items():
            print(f"| {name} | {fmt_rate(values)} | {statistics.median(values) / base:.3f} |")
        sys.stdout.flush()

    if "solve" in sections:
        try:
            import scipy  # noqa: F401

            have_scipy = True
        except ImportError:
            have_scipy = False
            print("\n(scipy is not installed: solve table skipped)")
        if have_scipy:
            print(f"\n## Solve latency: factor + solve, median of {args.repeats * 3} runs (ms)\n")
            print(f"| d | C | headstart | scipy cho_factor + cho_solve ({threads} threads) | ratio |")
            print("|---:|---:|---:|---:|---:|")
            for d in (768, 2048):
                for c in (100, 1000):
                    hs, sp = [], []
                    for rep in range(args.repeats):
                        r = headstart(args.binary, ["--solve", "--dim", d, "--classes", c, "--repeat", 3])
                        hs.append(r["solve_ms"])
                        s = child("solve", dict(dim=d, classes=c, repeat=3, seed=rep, **{"lambda": 0.05}), threads)
                        sp.append(1e3 * s["seconds"])
                    print(f"| {d} | {c} | {statistics.median(hs):.2f} ({min(hs):.2f}..{max(hs):.2f}) | "
                          f"{statistics.median(sp):.2f} ({min(sp):.2f}..{max(sp):.2f}) | "
                          f"{statistics.median(hs) / statistics.median(sp):.2f} |")
            sys.stdout.flush()

    if "memory" in sections:
        print("\n## Memory (peak RSS minus the batch pool, MiB)\n")
        print("| d | C | N | peak RSS | pool | RSS - pool | state |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for d, c, n in ((768, 100, 40960), (768, 100, 409600), (2048, 1000, 40960)):
            r = headstart(args.binary, ["--dim", d, "--classes", c, "--samples", n, "--pool-mib", 256])
            print(f"| {d} | {c} | {n} | {r['rss_mib']:.1f} | {r['pool_mib']:.1f} | "
                  f"{r['rss_mib'] - r['pool_mib']:.1f} | {r['state_mib']:.1f} |")

    if "fit" in sections or "serve" in sections or "tls" in sections:
        import tempfile

        with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
            if "fit" in sections:
                fit_section(args, scratch, pool_bytes)
            if "serve" in sections:
                serve_section(args, scratch, pool_bytes)
            if "tls" in sections:
                tls_section(args, scratch)


def write_npy(path_x, path_y, rows, dim, seed):
    """A float32 feature file and int64 labels (0..99), written in 64 MiB pieces."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = np.lib.format.open_memmap(path_x, mode="w+", dtype=np.float32, shape=(rows, dim))
    step = max(1, (64 * MIB) // (4 * dim))
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        x[start:stop] = rng.standard_normal((stop - start, dim), dtype=np.float32)
    x.flush()
    del x
    np.save(path_y, rng.integers(0, 100, rows, dtype=np.int64))
    # Into the page cache: the figures are about the engine, not the disk.
    for path in (path_x, path_y):
        with open(path, "rb") as f:
            while f.read(64 * MIB):
                pass


def fit_section(args, scratch, pool_bytes):
    threads = os.cpu_count() or 1
    d = 768
    rows = int(args.fit_gib * 1024 * MIB) // (4 * d)
    px, py = os.path.join(scratch, "fit_x.npy"), os.path.join(scratch, "fit_y.npy")
    write_npy(px, py, rows, d, 11)
    out = os.path.join(scratch, "head.safetensors")
    fit_total, fit_stream, fit_rss, bench, np_seconds, np_rss = [], [], [], [], [], []
    wrapper = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)")
    for _ in range(args.repeats):
        started = time.perf_counter()
        done = subprocess.run([args.binary, "fit", "--features", px, "--labels", py, "--out", out],
                              check=True, capture_output=True, text=True)
        fit_total.append(rows / (time.perf_counter() - started))
        m = re.search(r"reading and accumulating [0-9.]+ s, ([0-9.]+) samples/s", done.stdout)
        fit_stream.append(float(m.group(1)))
        # Peak RSS of one more fit, in a wrapper process of its own.
        measured = subprocess.run([sys.executable, "-c", wrapper, args.binary, "fit", "--features", px, "--labels", py,
                                   "--out", out], check=True, capture_output=True, text=True)
        fit_rss.append(float(measured.stdout.strip()))
        r = headstart(args.binary, ["--dim", d, "--batch", 4096, "--samples", samples_for(d, 4096, args.seconds),
                                    "--pool-mib", pool_bytes / MIB])
        bench.append(r["throughput"])
        numpy_fit = child("fit", dict(features=px, labels=py, lam=0.05, out=os.path.join(scratch, "numpy_head.npz")),
                          threads)
        np_seconds.append(numpy_fit["seconds"])
        np_rss.append(numpy_fit["rss_mib"])
    base = statistics.median(bench)
    print(f"\n## fit on a {rows * d * 4 / 1024 / MIB:.2f} GiB float32 .npy (d={d}, {rows} rows, exact, page cache warm)\n")
    print("numpy: `fit_worker` in benches/compare.py, a careful streaming script (the features memory-mapped and "
          "converted 4096 rows at a time, per-class sums, Cholesky solve, head saved), in a process of its own with "
          f"its default {threads} BLAS threads. Peak RSS includes the page cache mapped into it.\n")
    print("| run | samples/s | vs bench | wall s | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|")
    print(f"| `bench --dim {d}` (defaults) | {fmt_rate(bench)} | 1.00 | | |")
    print(f"| `fit`: reading and accumulating | {fmt_rate(fit_stream)} | {statistics.median(fit_stream) / base:.2f} | | |")
    fit_wall = [rows / r for r in fit_total]
    print(f"| `fit`: whole command (start, solve, write) | {fmt_rate(fit_total)} | "
          f"{statistics.median(fit_total) / base:.2f} | {statistics.median(fit_wall):.2f} "
          f"({min(fit_wall):.2f}..{max(fit_wall):.2f}) | {statistics.median(fit_rss):.0f} |")
    np_rate = [rows / t for t in np_seconds]
    print(f"| numpy script, whole | {fmt_rate(np_rate)} | {statistics.median(np_rate) / base:.2f} | "
          f"{statistics.median(np_seconds):.2f} ({min(np_seconds):.2f}..{max(np_seconds):.2f}) | "
          f"{statistics.median(np_rss):.0f} |")
    sys.stdout.flush()


def secure_files(binary, scratch):
    """A private CA, a server certificate and a token file (push and admin) in `scratch`."""
    certs = os.path.join(scratch, "certs")
    if not os.path.exists(os.path.join(certs, "ca.pem")):
        subprocess.run([binary, "certs", "--out", certs], check=True, stdout=subprocess.DEVNULL)
    tokens = os.path.join(scratch, "tokens")
    with open(os.open(tokens, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(f"push {os.urandom(16).hex()}\nadmin {os.urandom(16).hex()}\n")
    os.chmod(tokens, 0o600)
    serve = ["--token-file", tokens, "--tls-cert", os.path.join(certs, "server.pem"),
             "--tls-key", os.path.join(certs, "server.key")]
    push = ["--token-file", tokens, "--tls-ca", os.path.join(certs, "ca.pem")]
    return serve, push


def serve_run(binary, scratch, px, py, rows, d, clients, window, secure=None):
    state = os.path.join(scratch, f"serve-{window}.hs")
    if os.path.exists(state):
        os.remove(state)
    serve_extra, push_extra = secure if secure else ([], [])
    server = subprocess.Popen([binary, "serve", "--listen", "127.0.0.1:0", "--state", state, "--dim", str(d), "--quiet",
                               *serve_extra], stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline().strip()
        address = line.removeprefix("listening on ").split()[0]
        server_before, pushes_before = process_cpu(server.pid), children_cpu()
        started = time.perf_counter()
        pushes = [subprocess.Popen([binary, "push", "--connect", address, "--features", px, "--labels", py,
                                    "--window", str(window), *push_extra],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                  for _ in range(clients)]
        for p in pushes:
            _, err = p.communicate()
            if p.returncode != 0:
                raise RuntimeError(f"push failed: {err.decode()}")
        wall = time.perf_counter() - started
        samples = clients * rows
        # CPU microseconds per sample: the server's, and the push processes'.
        return (samples / wall, (process_cpu(server.pid) - server_before) / samples * 1e6,
                (children_cpu() - pushes_before) / samples * 1e6)
    finally:
        server.terminate()
        server.wait()


def serve_section(args, scratch, pool_bytes):
    d, clients = 384, 4
    rows = 1 << 17
    px, py = os.path.join(scratch, "serve_x.npy"), os.path.join(scratch, "serve_y.npy")
    write_npy(px, py, rows, d, 12)
    runs = {"bench": [], "window": [], "stop-and-wait": [], "one, window": [], "one, stop-and-wait": []}
    server_cpu = {key: [] for key in runs}
    push_cpu = {key: [] for key in runs}
    settings = {"window": (clients, 8), "stop-and-wait": (clients, 1), "one, window": (1, 8),
                "one, stop-and-wait": (1, 1)}
    for _ in range(args.repeats):
        r = headstart(args.binary, ["--dim", d, "--batch", 4096, "--samples", clients * rows,
                                    "--pool-mib", pool_bytes / MIB])
        runs["bench"].append(r["throughput"])
        server_cpu["bench"].append(r["cpu_s"] / (clients * rows) * 1e6)
        for key, (n, window) in settings.items():
            rate, server, pushes = serve_run(args.binary, scratch, px, py, rows, d, n, window)
            runs[key].append(rate)
            server_cpu[key].append(server)
            push_cpu[key].append(pushes)
    base = statistics.median(runs["bench"])
    base_cpu = statistics.median(server_cpu["bench"])
    print(f"\n## serve: {clients} `headstart push` processes over loopback, {rows} rows each (d={d}, B=4096, exact)\n")
    print("The clients run on the same machine and take CPU from the server. The CPU columns are microseconds "
          "per sample (user + system): the server's own (for `bench`, the whole process, pool generation "
          "included) and all push processes'. bench / server CPU is the server's rate if its clients ran "
          "elsewhere.\n")
    print("| run | samples/s | vs bench | server CPU µs/sample | push CPU µs/sample | bench CPU / server CPU |")
    print("|---|---:|---:|---:|---:|---:|")
    names = {"bench": f"`bench --dim {d}` (defaults)", "window": "serve, `push` default window (8)",
             "stop-and-wait": "serve, `push --window 1`", "one, window": "serve, one `push` (window 8)",
             "one, stop-and-wait": "serve, one `push --window 1`"}
    for key, values in runs.items():
        cpu = statistics.median(server_cpu[key])
        pushes = f"{statistics.median(push_cpu[key]):.2f}" if push_cpu[key] else "-"
        print(f"| {names[key]} | {fmt_rate(values)} | {statistics.median(values) / base:.2f} | {cpu:.2f} | "
              f"{pushes} | {base_cpu / cpu:.2f} |")
    sys.stdout.flush()


def tls_section(args, scratch):
    d, rows = 384, 1 << 17
    px, py = os.path.join(scratch, "serve_x.npy"), os.path.join(scratch, "serve_y.npy")
    if not os.path.exists(py):
        write_npy(px, py, rows, d, 12)
    secure = secure_files(args.binary, scratch)
    runs = {"4 plain": [], "4 tls": [], "1 plain": [], "1 tls": []}
    for _ in range(args.repeats):
        for clients in (4, 1):
            runs[f"{clients} plain"].append(serve_run(args.binary, scratch, px, py, rows, d, clients, 8)[0])
            runs[f"{clients} tls"].append(serve_run(args.binary, scratch, px, py, rows, d, clients, 8, secure)[0])
    print(f"\n## tls: `headstart push` processes into `serve` over loopback, plaintext against TLS with tokens, "
          f"{rows} rows each (d={d}, B=4096, window 8)\n")
    print("| pushes | plaintext samples/s | TLS + tokens samples/s | TLS / plaintext |")
    print("|---:|---:|---:|---:|")
    for clients in (4, 1):
        plain, tls = runs[f"{clients} plain"], runs[f"{clients} tls"]
        print(f"| {clients} | {fmt_rate(plain)} | {fmt_rate(tls)} | {statistics.median(tls) / statistics.median(plain):.2f} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
