"""Statistics of a Ray Dataset, accumulated in Ray's worker processes.

`accumulate(dataset, feature_column, label_column, dim)` runs one task per block of the
dataset (`Dataset.map_batches` with `batch_size=None`): each adds its block's rows, read in
place from the block's Arrow columns (`Stats.update_table`), to a fresh `Stats` and returns
that partial state's bytes (`Stats.to_bytes`, the CLI's state-file format, a few MB for
d = 384). The driver merges the partials as they arrive, `fan_in` at a time, in a tree, and
returns the total: the same statistics as one process adding every row (the sums are float64
and exact up to the order of addition, about 1e-15 relative).

The block function is a module-level function with plain arguments (no driver state, no
paths): it runs unchanged on a multi-node cluster where `headstart` is installed on every node
(as a package, or through a `runtime_env`). Ray is imported only by `accumulate`:
`import headstart` (and `import headstart.ray`) do not need it.

Example::

    import ray, headstart.ray

    ds = ray.data.read_parquet("s3://bucket/features/")   # columns "emb" (d floats), "label"
    timings = {}
    stats = headstart.ray.accumulate(ds, "emb", "label", dim=384, timings=timings)
    head = stats.solve()
    print(timings)   # accumulate_s, merge_s, partials, rows
"""

import time

from . import Stats

__all__ = ["accumulate"]


def _accumulate_block(batch, *, dim, feature_column, label_column, precision, threads):
    """One block (a pyarrow Table) → a one-row table holding its partial state's bytes."""
    import pyarrow as pa

    if batch.num_rows == 0:
        return pa.table({"state": pa.array([], pa.large_binary())})
    stats = Stats(dim, precision=precision, threads=threads)
    try:
        stats.update_table(batch, feature_column, label_column)
    except ValueError as e:
        # Re-raised on the driver as a ValueError (see `_refusal`).
        raise ValueError(f"{_MARK}{e} (the row within a block of {batch.num_rows} rows)") from e
    return pa.table({"state": pa.array([stats.to_bytes()], pa.large_binary())})


_MARK = "headstart.ray: a block was refused: "


def _refusal(error):
    """The block function's ValueError, from the text of the Ray error that carries it (Ray
    passes a task's exception to the driver as text in a `RayTaskError`), or None."""
    text = str(error)
    start = text.find(_MARK)
    if start < 0:
        return None
    return ValueError(text[start:].split("\n", 1)[0])


class _Tree:
    """Merges states `fan_in` at a time, level by level, as they arrive: it holds at most
    fan_in - 1 states per level, and every state is merged once per level it climbs."""

    def __init__(self, fan_in):
        self.fan_in = fan_in
        self.levels = []
        self.merge_s = 0.0

    def _merge(self, states):
        start = time.perf_counter()
        total = states[0]
        for other in states[1:]:
            total.merge(other)
        self.merge_s += time.perf_counter() - start
        return total

    def push(self, state, level=0):
        while True:
            if level == len(self.levels):
                self.levels.append([])
            self.levels[level].append(state)
            if len(self.levels[level]) < self.fan_in:
                return
            state, self.levels[level] = self._merge(self.levels[level]), []
            level += 1

    def total(self):
        carry = None
        for level in self.levels:
            group = level + ([carry] if carry is not None else [])
            if group:
                carry = self._merge(group) if len(group) > 1 else group[0]
        return carry


def accumulate(
    dataset,
    feature_column,
    label_column,
    dim,
    *,
    precision="exact",
    threads=None,
    fan_in=8,
    timings=None,
):
    """The `Stats` of every row of a Ray Dataset, accumulated block by block in Ray's workers.

    `feature_column`: d float32/float64 values per row (an Arrow fixed-size list, a list of
    length d, or a Ray tensor column of shape (d,)); `label_column`: integers. Nulls, lists of
    another length and NaN/inf fail the block's task, and the call raises ValueError naming
    the row within that block (Ray's error, with the task's traceback, is its `__cause__`).

    `precision`: as `Stats` ("exact" or "fast"). `threads`: CPUs each block's task reserves
    from Ray and computes its product on (None: 1, Ray's default reservation). `fan_in`: how
    many states the driver merges at a time (≥ 2). `timings`: a dict to fill with
    `accumulate_s` (wall time until the last partial state arrived), `merge_s` (driver time
    spent decoding and merging partials, partly overlapping the former), `total_s`,
    `partials` (states merged) and `rows`.

    The result has `precision` and `threads` as given (threads=None: every core, as `Stats`).
    """
    import ray  # noqa: F401  (a clear ImportError here rather than inside Ray Data)

    if fan_in < 2:
        raise ValueError(f"fan_in must be at least 2, got {fan_in}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1 (or None), got {threads}")
    Stats(dim, precision=precision)  # checks dim and precision before any task starts
    cpus = threads or 1
    start = time.perf_counter()
    partials = dataset.map_batches(
        _accumulate_block,
        batch_format="pyarrow",
        batch_size=None,  # one call, one partial state, per block
        zero_copy_batch=True,
        num_cpus=cpus,
        fn_kwargs={
            "dim": dim,
            "feature_column": feature_column,
            "label_column": label_column,
            "precision": precision,
            "threads": cpus,
        },
    )
    tree, count, decode_s = _Tree(fan_in), 0, 0.0
    try:
        for block in partials.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=1):
            for data in block.column("state").to_pylist():  # a few state blobs, not data rows
                t = time.perf_counter()
                state = Stats.from_bytes(data)
                decode_s += time.perf_counter() - t
                tree.push(state)
                count += 1
    except Exception as error:
        refusal = _refusal(error)
        if refusal is None:
            raise
        raise refusal from error
    arrived = time.perf_counter()
    # A state file does not record precision or threads: the result takes the caller's.
    result = Stats(dim, precision=precision, threads=threads)
    if count:
        result = tree._merge([result, tree.total()])  # the empty state is merge's identity
    end = time.perf_counter()
    if timings is not None:
        timings.update(
            accumulate_s=arrived - start,
            merge_s=tree.merge_s + decode_s,
            total_s=end - start,
            partials=count,
            rows=result.n,
        )
    return result
