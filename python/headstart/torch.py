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

from ._native import Head, Stats
from ._safetensors import read_safetensors

__all__ = ["init_rows", "grow", "load_head", "all_reduce", "LoadedHead"]


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


def init_rows(linear: torch.nn.Linear, head: Union[Head, LoadedHead], norm: str = "none") -> torch.Tensor:
    """Writes the head's rows into `linear` at the rows given by its class ids, in place.

    `norm="match"` scales each new row (and its bias) so that its norm is the median norm of
    the rows this call does not touch, as cross-entropy-trained rows are much longer than LS
    rows. Returns the row indices written. Raises ValueError (changing nothing) when the
    dimensions differ, a class id is outside the layer, or "match" has no rows to match.
    """
    if norm not in ("none", "match"):
        raise ValueError(f"norm must be 'none' or 'match', got {norm!r}")
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
    if norm == "match":
        untouched = torch.ones(out_features, dtype=torch.bool)
        untouched[ids] = False
        if not bool(untouched.any()):
            raise ValueError("norm='match' needs rows the head does not replace")
        target = linear.weight.detach()[untouched.to(linear.weight.device)].double().norm(dim=1).median()
        lengths = weight.double().norm(dim=1)
        scale = torch.where(lengths > 0, target.cpu() / lengths, torch.ones_like(lengths))
        weight = weight.double() * scale[:, None]
        bias = bias.double() * scale
    index = ids.to(linear.weight.device)
    with torch.no_grad():
        linear.weight[index] = weight.to(linear.weight)
        if linear.bias is not None:
            linear.bias[index] = bias.to(linear.bias)
    return ids


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
