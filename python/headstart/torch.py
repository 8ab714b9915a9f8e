"""PyTorch helpers: solved rows into `nn.Linear`, larger heads, head files, and statistics
accumulated across the processes of a torch.distributed job.

    from headstart.torch import init_rows, grow, load_head, all_reduce

    fc = grow(model.fc, 20)                     # 10 old classes + 10 new rows
    init_rows(fc, stats.solve(classes=list(range(10, 20))))
    model.fc = fc

    merged = all_reduce(stats)                  # every rank: the statistics of all ranks
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch

from ._native import Head, Stats, fit_scale
from ._safetensors import read_safetensors

__all__ = ["init_rows", "RowInit", "grow", "load_head", "all_reduce", "LoadedHead"]


@dataclass
class LoadedHead:
    """A head read from a file: `weight` (C, d), `bias` (C,), `class_ids` (C,), as tensors."""

    weight: torch.Tensor
    bias: torch.Tensor
    class_ids: torch.Tensor
    metadata: dict


def load_head(path: Union[str, os.PathLike], prefix: Optional[str] = None) -> LoadedHead:
    """Reads a head file written by headstart (`fit`, `solve`, `Head.save`).

    `prefix` is the tensor-name prefix (e.g. "fc."). With None it is found from the file: the
    one prefix under which `weight`, `bias` and `class_ids` all exist. A leading "module." (as
    DistributedDataParallel writes) is accepted either way.
    """
    with open(path, "rb") as f:
        tensors, metadata = read_safetensors(f.read())
    names = {name[len("module.") :] if name.startswith("module.") else name: name for name in tensors}
    if prefix is None:
        candidates = sorted(
            n[: -len("class_ids")]
            for n in names
            if n.endswith("class_ids") and n[: -len("class_ids")] + "weight" in names
        )
        if len(candidates) != 1:
            raise ValueError(f"{path}: cannot tell the head's prefix (candidates: {candidates}); pass prefix=")
        prefix = candidates[0]
    prefix = prefix[len("module.") :] if prefix.startswith("module.") else prefix
    missing = [k for k in ("weight", "bias", "class_ids") if prefix + k not in names]
    if missing:
        raise ValueError(f"{path}: no tensor {prefix + missing[0]!r} (tensors: {sorted(tensors)})")
    get = lambda k: torch.from_numpy(tensors[names[prefix + k]])  # noqa: E731
    weight, bias, ids = get("weight"), get("bias"), get("class_ids").long()
    if weight.ndim != 2 or bias.shape != (weight.shape[0],) or ids.shape != (weight.shape[0],):
        raise ValueError(f"{path}: shapes {tuple(weight.shape)}, {tuple(bias.shape)}, {tuple(ids.shape)} do not form a head")
    return LoadedHead(weight, bias, ids, metadata)


def _as_tensors(head: Union[Head, LoadedHead]):
    if isinstance(head, LoadedHead):
        return head.weight, head.bias, head.class_ids
    return torch.from_numpy(head.weight), torch.from_numpy(head.bias), torch.from_numpy(head.class_ids)


@dataclass
class RowInit:
    """What `init_rows` wrote and fitted.

    `rows`: the layer rows written (the head's class ids). `scale`: the factor applied to the
    new rows' weights and biases (1.0 without calibration). `source`: "none", "sample" or
    "stats". `loss_before` / `loss_after`: the layer's mean cross-entropy over the `active`
    classes on the calibration sample at scale 1 and at the fitted scale (None without
    calibration). `samples`: the calibration sample's size. `at_bound`: the fit stopped at
    the largest scale allowed (`max_logit`): the sample alone would push the new rows' logits
    higher still.
    """

    rows: torch.Tensor
    scale: float = 1.0
    source: str = "none"
    loss_before: Optional[float] = None
    loss_after: Optional[float] = None
    samples: int = 0
    at_bound: bool = False


def init_rows(
    linear: torch.nn.Linear,
    head: Union[Head, LoadedHead],
    norm: str = "none",
    *,
    calibrate=None,
    active=None,
    max_logit: float = 30.0,
    stats_samples: int = 4096,
    seed: int = 0,
) -> RowInit:
    """Writes the head's rows into `linear` at the rows given by its class ids, in place, and
    returns a `RowInit`.

    LS rows regress targets of 1/C, so their logits are small next to rows trained with
    cross-entropy: calibrate them to the layer they join.

    - `calibrate=(features, labels)`: a sample of the new task's data (numpy arrays or
      tensors, any device; the first batch will do), labels being layer rows. One positive
      scale for the new rows (weight and bias together) is fitted to minimise the layer's
      cross-entropy over the `active` classes on that sample, then written. The loss is
      convex in the scale, so the fit is exact (bisection on its derivative).
    - `calibrate=stats` (a `headstart.Stats`): the same fit on `stats_samples` draws from the
      class-conditional Gaussian the statistics define (class means, pooled within-class
      covariance), over every `active` class they hold, old classes included: for when no
      sample is at hand.
    - `active`: the layer rows in the softmax (default: every row).
    - `max_logit`: the fitted scale keeps every new-row logit on the sample within ±max_logit
      (a sample the new rows separate perfectly would otherwise push the scale to infinity).
    - `norm="match"` scales each new row (and its bias) to the median norm of the rows this
      call does not touch (off by default; `docs/results.md` shows it hurts).

    Raises ValueError, changing nothing, when the dimensions differ, a class id is outside the
    layer, the sample is empty, non-finite or of the wrong dimension, or one of its labels is
    not an `active` row.
    """
    if norm not in ("none", "match"):
        raise ValueError(f"norm must be 'none' or 'match', got {norm!r}")
    if norm == "match" and calibrate is not None:
        raise ValueError("norm='match' and calibrate set the scale two ways; choose one")
    weight, bias, ids = _as_tensors(head)
    out_features, in_features = linear.weight.shape
    if weight.shape[1] != in_features:
        raise ValueError(f"the head has {weight.shape[1]} features but the layer takes {in_features}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= out_features):
        bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
        raise ValueError(f"class id {bad} is outside the layer's {out_features} outputs (grow it first)")
    if ids.unique().numel() != ids.numel():
        raise ValueError("the head lists a class id twice")
    if linear.bias is None and bool((bias != 0).any()):
        raise ValueError("the layer has no bias but the head does; solve with bias=False")
    weight, bias = weight.double(), bias.double()
    result = RowInit(rows=ids)
    if norm == "match":
        untouched = torch.ones(out_features, dtype=torch.bool)
        untouched[ids] = False
        if not bool(untouched.any()):
            raise ValueError("norm='match' needs rows the head does not replace")
        target = linear.weight.detach()[untouched.to(linear.weight.device)].double().norm(dim=1).median()
        lengths = weight.norm(dim=1)
        scale = torch.where(lengths > 0, target.cpu() / lengths, torch.ones_like(lengths))
        weight = weight * scale[:, None]
        bias = bias * scale
    active_rows = _active_rows(active, out_features, ids)
    if calibrate is not None:
        if isinstance(calibrate, Stats):
            x, y = _gaussian_sample(calibrate, active_rows, stats_samples, seed)
            source = "stats"
        else:
            x, y = _sample(calibrate, in_features, active_rows)
            source = "sample"
        scale, before, after, at_bound = _fit_scale(linear, weight, bias, ids, active_rows, x, y, max_logit)
        weight, bias = weight * scale, bias * scale
        result = RowInit(ids, scale, source, before, after, len(y), at_bound)
    index = ids.to(linear.weight.device)
    with torch.no_grad():
        linear.weight[index] = weight.to(linear.weight)
        if linear.bias is not None:
            linear.bias[index] = bias.to(linear.bias)
    return result


def _active_rows(active, out_features: int, ids: torch.Tensor) -> torch.Tensor:
    if active is None:
        return torch.arange(out_features)
    rows = torch.as_tensor(np.asarray(active.cpu() if isinstance(active, torch.Tensor) else active)).long().flatten()
    if rows.numel() == 0:
        raise ValueError("active is empty")
    if int(rows.min()) < 0 or int(rows.max()) >= out_features:
        raise ValueError(f"active lists row {int(rows.max()) if int(rows.max()) >= out_features else int(rows.min())}, outside the layer's {out_features} outputs")
    if rows.unique().numel() != rows.numel():
        raise ValueError("active lists a row twice")
    missing = sorted(set(ids.tolist()) - set(rows.tolist()))
    if missing:
        raise ValueError(f"the head's classes {missing[:8]} are not in active")
    return rows


def _sample(calibrate, dim: int, active_rows: torch.Tensor):
    """The (features, labels) calibration pair as float64 / int64 CPU tensors, checked."""
    try:
        features, labels = calibrate
    except (TypeError, ValueError):
        raise ValueError("calibrate must be a (features, labels) pair or a headstart.Stats") from None
    to_tensor = lambda a: a.detach().cpu() if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a))  # noqa: E731
    x, y = to_tensor(features), to_tensor(labels)
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"calibrate: features of dtype {x.dtype} are not numbers")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"calibrate: labels must be integers, got {y.dtype}")
    x, y = x.double(), y.long()
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"calibrate: features of shape {tuple(x.shape)}, expected (n, {dim})")
    if y.shape != (x.shape[0],):
        raise ValueError(f"calibrate: {x.shape[0]} feature rows but labels of shape {tuple(y.shape)}")
    if x.shape[0] == 0:
        raise ValueError("calibrate: the sample is empty")
    if not bool(torch.isfinite(x).all()):
        row = int((~torch.isfinite(x)).any(dim=1).nonzero()[0])
        raise ValueError(f"calibrate: features row {row} is not finite")
    outside = ~torch.isin(y, active_rows)
    if bool(outside.any()):
        row = int(outside.nonzero()[0])
        raise ValueError(f"calibrate: label {int(y[row])} (row {row}) is not an active class")
    return x, y


def _gaussian_sample(stats: Stats, active_rows: torch.Tensor, n: int, seed: int):
    """Draws from N(mean_c, pooled within-class covariance) for each active class the
    statistics hold, in proportion to the class counts (at least one draw each)."""
    if stats.n == 0:
        raise ValueError("calibrate: the statistics hold no samples")
    parts = stats._parts()
    dim = int(parts["dim"])
    gram = np.zeros((dim, dim))
    rows, cols = np.tril_indices(dim)
    counts, sums = {}, {}
    total = 0
    for segment in _SEGMENTS:
        seg = parts[segment]
        lower = np.zeros((dim, dim))
        lower[rows, cols] = seg["gram_lower"]
        gram += lower + np.tril(lower, -1).T
        total += int(seg["n"])
        for cid, count, s in zip(seg["class_ids"], seg["class_counts"], seg["class_sums"]):
            counts[int(cid)] = counts.get(int(cid), 0) + int(count)
            sums[int(cid)] = sums.get(int(cid), 0) + s
    classes = [c for c in active_rows.tolist() if counts.get(c, 0) > 0]
    if not classes:
        raise ValueError("calibrate: the statistics hold none of the active classes")
    means = np.stack([sums[c] / counts[c] for c in classes])
    held = np.array([counts[c] for c in classes], dtype=np.float64)
    # Pooled within-class covariance of every class the statistics hold.
    all_means = np.stack([sums[c] / counts[c] for c in counts])
    all_counts = np.array([counts[c] for c in counts], dtype=np.float64)
    within = gram / total - (all_means.T * (all_counts / total)) @ all_means
    within = 0.5 * (within + within.T)
    values, vectors = np.linalg.eigh(within)
    root = vectors * np.sqrt(np.clip(values, 0.0, None))
    per_class = np.maximum(1, np.round(n * held / held.sum())).astype(int)
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.asarray(classes, dtype=np.int64), per_class)
    x = means[np.repeat(np.arange(len(classes)), per_class)] + rng.standard_normal((len(labels), dim)) @ root.T
    return torch.from_numpy(x), torch.from_numpy(labels)


def _fit_scale(linear, weight, bias, ids, active_rows, x, y, max_logit):
    """The scale a > 0 of the new rows that minimises the mean cross-entropy over the active
    rows on (x, y), fitted exactly by headstart's native `fit_scale` (convex in a). Returns
    (a, loss at 1, loss at a, whether a hit its cap)."""
    device = linear.weight.device
    with torch.no_grad():
        x = x.to(device)
        is_new = torch.isin(active_rows, ids)
        old_rows = active_rows[~is_new].to(device)
        old = x @ linear.weight.detach()[old_rows].to(device, torch.float64).T
        if linear.bias is not None:
            old = old + linear.bias.detach()[old_rows].to(device, torch.float64)
        new = x @ weight.to(device).T + bias.to(device)
    column = {int(r): k for k, r in enumerate(old_rows.tolist())}
    column.update({int(r): len(column) + k for k, r in enumerate(ids.tolist())})
    targets = np.array([column[int(v)] for v in y.tolist()], dtype=np.int64)
    fixed = np.ascontiguousarray(old.cpu().numpy(), dtype=np.float64).reshape(len(targets), -1)
    fresh = np.ascontiguousarray(new.cpu().numpy(), dtype=np.float64)
    return fit_scale(fixed, fresh, targets, max_logit)


def grow(linear: torch.nn.Linear, num_classes: int) -> torch.nn.Linear:
    """A new `nn.Linear` with `num_classes` outputs whose first rows are `linear`'s (same device
    and dtype); the added rows keep PyTorch's default initialisation."""
    old = linear.out_features
    if num_classes < old:
        raise ValueError(f"grow: {num_classes} classes is fewer than the layer's {old}")
    grown = torch.nn.Linear(
        linear.in_features, num_classes, bias=linear.bias is not None, device=linear.weight.device, dtype=linear.weight.dtype
    )
    with torch.no_grad():
        grown.weight[:old] = linear.weight
        if linear.bias is not None:
            grown.bias[:old] = linear.bias
    return grown


_SEGMENTS = ("before", "task")


def all_reduce(stats: Stats, group=None) -> Stats:
    """A collective: every rank passes its own statistics and gets back the sum over all ranks,
    exactly what one process would hold after seeing every rank's data (float64, up to the
    order of additions). Ranks may hold different classes.

    Two steps: the ranks agree on the union of class ids (`all_gather_object`), then one flat
    float64 buffer is all-reduced (on the GPU under NCCL, on the CPU under gloo). Counts travel
    as float64, exact below 2^53 samples.
    """
    import torch.distributed as dist

    parts = stats._parts()
    dim = int(parts["dim"])
    local_ids = sorted({int(i) for s in _SEGMENTS for i in parts[s]["class_ids"]})
    gathered = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, (dim, local_ids), group=group)
    dims = sorted({d for d, _ in gathered})
    if len(dims) != 1:
        raise ValueError(f"all_reduce: the ranks' states have different dimensions {dims}")
    union = sorted(set().union(*(set(ids) for _, ids in gathered)))
    slot = {cid: k for k, cid in enumerate(union)}
    k = len(union)
    tri = dim * (dim + 1) // 2

    pieces = []
    for s in _SEGMENTS:
        seg = parts[s]
        if seg["n"] >= 2**53:
            raise ValueError("all_reduce: more than 2^53 samples cannot travel exactly as float64")
        counts = np.zeros(k)
        sums = np.zeros((k, dim))
        for row, cid in enumerate(seg["class_ids"]):
            counts[slot[int(cid)]] = seg["class_counts"][row]
            sums[slot[int(cid)]] = seg["class_sums"][row]
        pieces += [np.array([seg["n"]], dtype=np.float64), seg["gram_lower"], seg["sum"], counts, sums.ravel()]
    flat = torch.from_numpy(np.concatenate(pieces))
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else torch.device("cpu")
    flat = flat.to(device)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    tasks = torch.tensor([int(parts["tasks_begun"])], dtype=torch.int64, device=device)
    dist.all_reduce(tasks, op=dist.ReduceOp.MAX, group=group)
    flat = flat.cpu().numpy()

    out = {"dim": dim, "tasks_begun": int(tasks.item())}
    at = 0

    def take(n):
        nonlocal at
        at += n
        return flat[at - n : at]

    for s in _SEGMENTS:
        n = int(round(take(1)[0]))
        gram, total = take(tri).copy(), take(dim).copy()
        counts = np.rint(take(k)).astype(np.uint64)
        sums = take(k * dim).reshape(k, dim)
        present = counts > 0
        out[s] = {
            "n": n,
            "gram_lower": gram,
            "sum": total,
            "class_ids": np.array(union, dtype=np.int64)[present],
            "class_counts": counts[present],
            "class_sums": sums[present].copy(),
        }
    return Stats._from_parts(out)
