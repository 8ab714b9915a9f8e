"""PyTorch helpers: solved rows into `nn.Linear`, larger heads, head files, and statistics
accumulated across the processes of a torch.distributed job.

    from headstart.torch import init_rows, grow, load_head, all_reduce

    fc = grow(model.fc, 20)                     # 10 old classes + 10 new rows
    head = stats.solve(classes=list(range(10, 20)))
    init_rows(fc, head, calibrate=stats)        # LS rows, scaled to the layer they join
    model.fc = fc

    merged = all_reduce(stats)                  # every rank: the statistics of all ranks
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch

from ._native import Head, Stats, fit_scale
from ._safetensors import read_safetensors

__all__ = [
    "init_rows",
    "RowInit",
    "grow",
    "load_head",
    "all_reduce",
    "LoadedHead",
    "RandomFeatures",
    "Accumulator",
]

_PHILOX_M = (0xD2511F53, 0xCD9E8D57)
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)
_MASK32 = 0xFFFFFFFF
# R's entries: (w0 + w1 + w2 + w3 - (2^33 - 2)) * sqrt(3) / 2^32, as Rust computes them.
_CENTRE = (1 << 33) - 2
_ENTRY_SCALE = math.sqrt(3.0) / 4294967296.0


def _mulhilo(a: torch.Tensor, m: int):
    """(hi, lo) 32-bit halves of a * m for uint32 values held in int64, without overflow:
    a is split into 16-bit halves so that every product stays below 2^48."""
    a_lo, a_hi = a & 0xFFFF, a >> 16
    p_lo, p_hi = a_lo * m, a_hi * m
    lo = (p_lo + ((p_hi & 0xFFFF) << 16)) & _MASK32
    hi = (p_hi + (p_lo >> 16)) >> 16
    return hi, lo


def philox4x32_10(c0, c1, c2, c3, key: tuple):
    """Philox4x32-10 (Random123) of int64 tensors holding uint32 counter words, under a key of
    two uint32 ints: the four uint32 output words, as int64 tensors."""
    k0, k1 = key
    for r in range(10):
        if r:
            k0, k1 = (k0 + _PHILOX_W[0]) & _MASK32, (k1 + _PHILOX_W[1]) & _MASK32
        hi0, lo0 = _mulhilo(c0, _PHILOX_M[0])
        hi1, lo1 = _mulhilo(c2, _PHILOX_M[1])
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


class RandomFeatures(torch.nn.Module):
    """z = ReLU(x @ R), with R (dim, m) regenerated on the input's device from `seed`, bit for
    bit the R of `headstart.RandomFeatures(dim, m, seed)` (Philox4x32-10 in int64 tensor
    arithmetic, no transcendental functions; docs/math.md, "Random features"). R is never
    stored: it is not in `state_dict()`; it is generated in column blocks on first use on a
    device and kept for later calls there.

        rf = RandomFeatures(768, 8192, seed=0)
        z = rf(x)                                # x (B, 768) on any device, float32/float64
    """

    def __init__(self, dim: int, m: int, seed: int = 0, block: int = 1024):
        super().__init__()
        if not (1 <= dim <= 65536 and 1 <= m <= 65536):
            raise ValueError(f"RandomFeatures: dim {dim} and m {m} must lie in 1..=65536")
        if not 0 <= seed < 2**64:
            raise ValueError(f"RandomFeatures: seed {seed} must lie in 0..2^64")
        self.dim, self.m, self.seed, self.block = int(dim), int(m), int(seed), int(block)
        self._cache: dict = {}

    @classmethod
    def of(cls, rf) -> "RandomFeatures":
        """The torch module of a `headstart.RandomFeatures` (or of a spec's JSON text)."""
        if isinstance(rf, str):
            spec = json.loads(rf)
            if spec.get("version") != 1 or spec.get("generator") != "philox4x32-10" or spec.get("activation") != "relu":
                raise ValueError(f"expansion spec {rf} is not one this version reproduces")
            return cls(int(spec["input_dim"]), int(spec["features"]), int(spec["seed"]))
        return cls(rf.dim, rf.m, rf.seed)

    def native(self):
        """The same expansion as a `headstart.RandomFeatures` (for `Stats(dim, expand=...)`)."""
        from ._native import RandomFeatures as Native

        return Native(self.dim, self.m, self.seed)

    def matrix(self, device=None, dtype=torch.float32) -> torch.Tensor:
        """R (dim, m) on `device` in `dtype` (float32 values, widened exactly for float64)."""
        device = torch.device(device) if device is not None else torch.device("cpu")
        key = (device, dtype)
        if key not in self._cache:
            self._cache[key] = self._generate(device).to(dtype)
        return self._cache[key]

    def _generate(self, device) -> torch.Tensor:
        r = torch.empty(self.dim, self.m, dtype=torch.float32, device=device)
        key = (self.seed & _MASK32, self.seed >> 32)
        rows = torch.arange(self.dim, dtype=torch.int64, device=device)[:, None]
        for j0 in range(0, self.m, self.block):
            j1 = min(j0 + self.block, self.m)
            cols = torch.arange(j0, j1, dtype=torch.int64, device=device)[None, :]
            c0 = cols.expand(self.dim, j1 - j0)
            c1 = rows.expand(self.dim, j1 - j0)
            zero = torch.zeros_like(c0)
            w = philox4x32_10(c0, c1, zero, zero, key)
            centred = (w[0] + w[1] + w[2] + w[3]) - _CENTRE
            r[:, j0:j1] = (centred.to(torch.float64) * _ENTRY_SCALE).to(torch.float32)
        return r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"RandomFeatures: input has {x.shape[-1]} features, expected {self.dim}")
        dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        return torch.relu(x.to(dtype) @ self.matrix(x.device, dtype))

    def extra_repr(self) -> str:
        return f"{self.dim}, {self.m}, seed={self.seed}"


class LoadedHead(torch.nn.Module):
    """A head read from a file: `weight` (C, d), `bias` (C,), `class_ids` (C,) as buffers (they
    move with `.to(device)`), the file's `metadata`, and `expansion`, the `RandomFeatures` the
    head's inputs go through (None for a plain head). Calling it gives the logits of raw
    features: `head(x)` = expansion(x) @ weight.T + bias, on the device the head is on."""

    def __init__(self, weight, bias, class_ids, metadata, expansion: Optional[RandomFeatures] = None):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.register_buffer("class_ids", class_ids)
        self.metadata = metadata
        self.expansion = expansion

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.expansion is not None:
            x = self.expansion(x)
        return torch.nn.functional.linear(x.to(self.weight.dtype), self.weight, self.bias)


def load_head(path: Union[str, os.PathLike], prefix: Optional[str] = None) -> LoadedHead:
    """Reads a head file written by headstart (`fit`, `solve`, `Head.save`) as a `LoadedHead`:
    a module whose call gives the logits of raw features on its device (applying the
    random-feature expansion the file records, if any), with the tensors as attributes.

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
    expansion = None
    if "expansion" in metadata:
        try:
            expansion = RandomFeatures.of(metadata["expansion"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: metadata 'expansion': {e}") from None
        if expansion.m != weight.shape[1]:
            raise ValueError(f"{path}: the expansion has {expansion.m} features but the weight has {weight.shape[1]} columns")
    return LoadedHead(weight, bias, ids, metadata, expansion)


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
    the largest scale allowed (the typical-confidence bound or `max_logit`): the sample alone
    would push the new rows' logits higher still. `margin_bound`: the old rows' median margin
    on their own classes that bounded the new rows' (None where none was measured).
    """

    rows: torch.Tensor
    scale: float = 1.0
    source: str = "none"
    loss_before: Optional[float] = None
    loss_after: Optional[float] = None
    samples: int = 0
    at_bound: bool = False
    margin_bound: Optional[float] = None


def init_rows(
    linear: torch.nn.Linear,
    head: Union[Head, LoadedHead],
    norm: str = "none",
    *,
    calibrate=None,
    active=None,
    max_logit: float = 30.0,
    stats_samples: int = 4096,
    stats_scope: Union[str, dict] = "task",
    seed: int = 0,
    bound: str = "typical",
    reference: Optional[Stats] = None,
    max_scale: Optional[float] = None,
    max_norm_ratio: Optional[float] = None,
) -> RowInit:
    """Writes the head's rows into `linear` at the rows given by its class ids, in place, and
    returns a `RowInit`.

    LS rows regress targets of 1/C, so their logits are small next to rows trained with
    cross-entropy: calibrate them to the layer they join. The recommended call, measured in
    `docs/results.md` from the same model state (first-batch loss 0.20-0.43x random rows' on
    three frozen feature sets, final accuracy above random rows' at every seed), needs
    nothing but the statistics:

        head = stats.solve(classes=new_classes)          # the scale-free default λ
        init_rows(fc, head, calibrate=stats, active=seen_classes)

    - `calibrate=(features, labels)`: a sample of the new task's data (numpy arrays or
      tensors, any device; the first batch will do), labels being layer rows. One positive
      scale for the new rows (weight and bias together) is fitted to minimise the layer's
      cross-entropy over the `active` classes on that sample, then written. The loss is
      convex in the scale, so the fit is exact (Newton steps on its derivative, safeguarded
      by bisection).
    - `calibrate=stats` (a `headstart.Stats`): the same fit on `stats_samples` draws from the
      class-conditional Gaussian the statistics define (class means, pooled within-class
      covariance), for when no sample is at hand. The draws are made in logit space (the
      logits of a Gaussian feature are Gaussian), so their cost does not grow with the
      feature dimension. `stats_scope="task"` (the default) draws the classes of the current
      task (since `begin_task`; every class if it was never called) in proportion to their
      counts there: the data the layer trains on next. `"all"` draws every `active` class
      the statistics hold in proportion to its count, old classes included. A dict
      {class id: weight} draws those classes in proportion to the weights (e.g. the shares
      of a batch that mixes replayed old classes with new ones).
    - `active`: the layer rows in the softmax (default: every row).
    - `bound="typical"` (the default): the new rows may be as confident on their classes as
      the old rows typically are on theirs, and no more. The bound is the old rows' median
      margin (true logit minus the log-sum-exp of the other old rows' logits) on their own
      classes, measured on draws from `reference` (a `headstart.Stats`; default: `calibrate`
      when it is one) or on the sample's rows of old classes (replay); the fitted scale is
      lowered until the new rows' median margin on the sample is at most that. A sample the
      new rows separate perfectly would otherwise push the scale to infinity, and a bound on
      the largest old logit grows with every task trained on confident rows; the median
      margin follows what training reaches on old data, not the extremes. Where neither
      source holds an old class, only `max_logit` applies. `bound="max_logit"`: only it.
    - `max_scale`: an upper bound on the fitted scale itself (None: none).
    - `max_norm_ratio`: the new rows' median norm stays at most this times the old active
      rows' median norm (without old active rows: the layer's other rows', and without those
      1/√3, the norm PyTorch's default initialisation gives a row). None: no such bound.
      Optimisers such as AdamW move each weight by about the learning rate per step, so rows
      far longer than the trained ones cannot be corrected by training; a training backbone
      then adapts to them instead, and the logits escalate from task to task.
    - `max_logit`: every new-row logit on the sample stays within max_logit of the largest
      old-row logit magnitude there (always applied; the typical bound is usually tighter).
    - `norm="match"` scales each new row (and its bias) to the median norm of the rows this
      call does not touch (off by default; `docs/results.md` shows it hurts).

    Raises ValueError, changing nothing, when the dimensions differ, a class id is outside the
    layer, the sample is empty, non-finite or of the wrong dimension, or one of its labels is
    not an `active` row.
    """
    if norm not in ("none", "match"):
        raise ValueError(f"norm must be 'none' or 'match', got {norm!r}")
    if isinstance(stats_scope, dict):
        bad = [(c, v) for c, v in stats_scope.items() if not (isinstance(v, (int, float)) and np.isfinite(v) and v >= 0)]
        if bad or not any(v > 0 for v in stats_scope.values()):
            raise ValueError(f"stats_scope: class weights must be finite, non-negative and not all zero, got {bad[:4] or stats_scope}")
    elif stats_scope not in ("all", "task"):
        raise ValueError(f"stats_scope must be 'all', 'task' or a dict of class weights, got {stats_scope!r}")
    if bound not in ("typical", "max_logit"):
        raise ValueError(f"bound must be 'typical' or 'max_logit', got {bound!r}")
    for name, value in (("max_scale", max_scale), ("max_norm_ratio", max_norm_ratio)):
        if value is not None and not (
            isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value) and value > 0
        ):
            raise ValueError(f"{name} must be a positive finite number or None, got {value!r}")
    if reference is not None and not isinstance(reference, Stats):
        raise ValueError(f"reference must be a headstart.Stats, got {type(reference).__name__}")
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
        model = None
        if isinstance(calibrate, Stats):
            model = _LogitModel(calibrate, linear, weight, bias, ids, active_rows)
            logits = _draw_logits(model, stats_samples, stats_scope, seed)
            source = "stats"
        else:
            x, y = _sample(calibrate, in_features, active_rows)
            logits = _sample_logits(linear, weight, bias, ids, active_rows, x, y)
            source = "sample"
        scale, before, after, at_bound = fit_scale(*logits, max_logit)
        margin = None
        if bound == "typical":
            margin = _old_margin(linear, weight, bias, ids, active_rows, calibrate, reference, logits, stats_samples, seed, model)
            if margin is not None:
                capped = _cap_to_margin(*logits, scale, margin)
                if capped < scale:
                    scale, at_bound = capped, True
                    after = _mean_ce(*logits, scale)
        if max_norm_ratio is not None:
            by_norm = _old_norm_scale(linear, weight, ids, active_rows)
            if by_norm is not None:
                by_norm *= max_norm_ratio
                max_scale = by_norm if max_scale is None else min(max_scale, by_norm)
        if max_scale is not None and scale > max_scale:
            scale, at_bound = float(max_scale), True
            after = _mean_ce(*logits, scale)
        weight, bias = weight * scale, bias * scale
        result = RowInit(ids, scale, source, before, after, len(logits[2]), at_bound, margin)
    index = ids.to(linear.weight.device)
    with torch.no_grad():
        linear.weight[index] = weight.to(linear.weight)
        if linear.bias is not None:
            linear.bias[index] = bias.to(linear.bias)
    return result


def _old_norm_scale(linear, weight, ids, active_rows):
    """The scale that gives the new rows the old active rows' median weight norm; without old
    active rows, the median norm of the layer's other rows, and without those the norm that
    PyTorch's default initialisation gives a row (1/√3, rows uniform in ±1/√in_features)."""
    old_rows = active_rows[~torch.isin(active_rows, ids)]
    if old_rows.numel() == 0:
        untouched = torch.ones(linear.out_features, dtype=torch.bool)
        untouched[ids] = False
        old_rows = untouched.nonzero().flatten()
    if old_rows.numel() == 0:
        target = 1.0 / np.sqrt(3.0)
    else:
        target = float(np.median(linear.weight.detach()[old_rows.to(linear.weight.device)].double().norm(dim=1).cpu().numpy()))
    mine = float(np.median(weight.double().norm(dim=1).cpu().numpy()))
    return target / mine if mine > 0 and target > 0 else None


def _margins(fixed: np.ndarray, fresh: np.ndarray, targets: np.ndarray, scale: float) -> np.ndarray:
    """Per sample: the true column's logit minus the log-sum-exp of the other columns'."""
    logits = np.concatenate([fixed, scale * fresh], axis=1)
    rows = np.arange(len(targets))
    true = logits[rows, targets]
    logits[rows, targets] = -np.inf
    top = logits.max(axis=1, keepdims=True)
    rest = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return true - rest


def _mean_ce(fixed, fresh, targets, scale: float) -> float:
    """The mean cross-entropy over [fixed | scale · fresh]."""
    logits = np.concatenate([fixed, scale * fresh], axis=1)
    top = logits.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return float(np.mean(lse - logits[np.arange(len(targets)), targets]))


def _old_margin(linear, weight, bias, ids, active_rows, calibrate, reference, logits, n: int, seed: int, model=None):
    """The old rows' median margin on their own classes, among the old rows only: from draws
    of the old classes of `reference` (or of `calibrate` when it is a Stats), else from the
    sample's old-class rows. None where there is no old class (or only one old row). `model`:
    the calibration's `_LogitModel`, reused when it was built from the same statistics."""
    fixed, _, targets = logits
    if fixed.shape[1] < 2:
        return None
    stats = reference if reference is not None else (calibrate if isinstance(calibrate, Stats) else None)
    if stats is not None:
        old_ids = set(active_rows.tolist()) - set(ids.tolist())
        held = {c: stats.class_weight(c) for c in stats.classes if c in old_ids}
        held = {c: w for c, w in held.items() if w > 0}
        if held:
            if stats.dim != linear.in_features:
                raise ValueError(f"reference: the statistics have {stats.dim} features but the layer takes {linear.in_features}")
            if model is None or model.stats is not stats:
                model = _LogitModel(stats, linear, weight, bias, ids, active_rows)
            old_fixed, _, old_targets = _draw_logits(model, n, held, seed + 1)
            return float(np.median(_margins(old_fixed, np.zeros((len(old_targets), 0)), old_targets, 1.0)))
    mine = targets < fixed.shape[1]
    if mine.any():
        return float(np.median(_margins(fixed[mine], np.zeros((int(mine.sum()), 0)), targets[mine], 1.0)))
    return None


def _cap_to_margin(fixed, fresh, targets, scale: float, margin: float) -> float:
    """The largest scale at most `scale` whose median margin on the sample's new-class rows is
    at most `margin` (bisection on ln scale; `scale` itself if it already is)."""
    new = targets >= fixed.shape[1]
    if not new.any():
        return scale
    # The old columns' log-sum-exp does not depend on the scale: computed once.
    f, v = fixed[new], fresh[new].copy()
    cols = targets[new] - fixed.shape[1]
    rows = np.arange(len(cols))
    fixed_lse = np.full(len(cols), -np.inf)
    if f.shape[1]:
        top = f.max(axis=1)
        fixed_lse = top + np.log(np.exp(f - top[:, None]).sum(axis=1))
    true = v[rows, cols].copy()
    v[rows, cols] = -np.inf

    def median(a: float) -> float:
        others = a * v
        top = np.maximum(others.max(axis=1), fixed_lse)
        rest = top + np.log(np.exp(others - top[:, None]).sum(axis=1) + np.exp(fixed_lse - top))
        return float(np.median(a * true - rest))

    if median(scale) <= margin:
        return scale
    lo, hi = np.log(min(1e-6, scale)), np.log(scale)
    if median(np.exp(lo)) > margin:
        return float(np.exp(lo))
    for _ in range(40):  # the bracket, at most ~30 wide in ln, shrinks below 1e-10
        mid = 0.5 * (lo + hi)
        if median(np.exp(mid)) > margin:
            hi = mid
        else:
            lo = mid
    return float(np.exp(lo))


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


def _columns(active_rows: torch.Tensor, ids: torch.Tensor):
    """The layer's old active rows, and each active row's column in [old rows | new rows]."""
    old_rows = active_rows[~torch.isin(active_rows, ids)]
    column = {int(r): k for k, r in enumerate(old_rows.tolist())}
    column.update({int(r): len(column) + k for k, r in enumerate(ids.tolist())})
    return old_rows, column


def _sample_logits(linear, weight, bias, ids, active_rows, x, y):
    """The old active rows' logits, the new rows' logits at scale 1, and the targets' columns,
    on the sample (x, y), in float64."""
    device = linear.weight.device
    old_rows, column = _columns(active_rows, ids)
    with torch.no_grad():
        x = x.to(device)
        old = x @ linear.weight.detach()[old_rows.to(device)].to(torch.float64).T
        if linear.bias is not None:
            old = old + linear.bias.detach()[old_rows.to(device)].to(torch.float64)
        new = x @ weight.to(device).T + bias.to(device)
    targets = np.array([column[int(v)] for v in y.tolist()], dtype=np.int64)
    fixed = np.ascontiguousarray(old.cpu().numpy(), dtype=np.float64).reshape(len(targets), -1)
    fresh = np.ascontiguousarray(new.cpu().numpy(), dtype=np.float64)
    return fixed, fresh, targets


def _stats_logits(stats: Stats, linear, weight, bias, ids, active_rows, n: int, scope: str, seed: int):
    """Logits drawn from the class-conditional Gaussian the statistics define: for class c,
    x ~ N(mean_c, pooled within-class covariance S), so the active rows' logits W x + b are
    N(W mean_c + b, W S Wᵀ). Classes are drawn in proportion to their counts in `scope` (at
    least one draw each). Returns what `_sample_logits` returns."""
    return _draw_logits(_LogitModel(stats, linear, weight, bias, ids, active_rows), n, scope, seed)


class _LogitModel:
    """The Gaussian of the active rows' logits that `_stats_logits` draws from: per class, the
    projected mean W mean_c + b, and one Cholesky root of W S Wᵀ. Built once per `init_rows`
    call and shared by the calibration draws and the typical-margin draws, which use the same
    rows: the d × d work (unpacking the Gram, W G Wᵀ) is then done once."""

    def __init__(self, stats: Stats, linear, weight, bias, ids, active_rows):
        if stats.n == 0:
            raise ValueError("calibrate: the statistics hold no samples")
        parts = stats._parts()
        dim = int(parts["dim"])
        if dim != linear.in_features:
            raise ValueError(f"calibrate: the statistics have {dim} features but the layer takes {linear.in_features}")
        self.stats = stats
        # Weights, not counts: after a decay the sums are weighted and divide by the weights.
        packed = 0.0
        counts, sums, recent = {}, {}, {}
        total = 0.0
        for segment in _SEGMENTS:
            seg = parts[segment]
            packed = packed + seg["gram_lower"]
            total += float(seg["weight"])
            for cid, held, s in zip(seg["class_ids"], seg["class_weights"], seg["class_sums"]):
                counts[int(cid)] = counts.get(int(cid), 0.0) + float(held)
                sums[int(cid)] = sums.get(int(cid), 0) + s
                if segment == "task":
                    recent[int(cid)] = float(held)
        self.counts, self.recent = counts, recent
        self.active_rows = active_rows
        old_rows, self.column = _columns(active_rows, ids)
        self.split = len(old_rows)
        with torch.no_grad():
            w_old = linear.weight.detach()[old_rows.to(linear.weight.device)].cpu().double().numpy()
            b_old = (
                linear.bias.detach()[old_rows.to(linear.weight.device)].cpu().double().numpy()
                if linear.bias is not None
                else np.zeros(len(old_rows))
            )
        w = np.concatenate([w_old, weight.cpu().numpy()])
        b = np.concatenate([b_old, bias.cpu().numpy()])
        order = list(counts)
        projected = np.stack([sums[c] / counts[c] for c in order]) @ w.T
        self.means = {c: projected[k] + b for k, c in enumerate(order)}
        # W S Wᵀ with S = G/N − Σ_c (n_c/N) μ_c μ_cᵀ, without forming S (d × d): G = T + Tᵀ − diag(T)
        # for T, the lower triangle held packed, so W G Wᵀ = A + Aᵀ − W diag(T) Wᵀ with A = W T Wᵀ.
        lower = _unpack_lower(packed, dim)
        half = (w @ lower) @ w.T
        gram_w = half + half.T - (w * np.diagonal(lower)) @ w.T
        held_all = np.array([counts[c] for c in order], dtype=np.float64) / total
        cov = gram_w / total - (projected.T * held_all) @ projected
        cov = 0.5 * (cov + cov.T)
        # A Cholesky factor (unique, so the draws do not depend on how eigenvectors were signed),
        # with a jitter relative to the mean variance for rank-deficient covariances.
        jitter = 1e-12 * max(float(np.trace(cov)) / len(cov), np.finfo(float).tiny)
        try:
            self.root = np.linalg.cholesky(cov + jitter * np.eye(len(cov)))
        except np.linalg.LinAlgError:
            values, vectors = np.linalg.eigh(cov)
            self.root = vectors * np.sqrt(np.clip(values, 0.0, None))


def _draw_logits(model: _LogitModel, n: int, scope, seed: int):
    """`n` draws (at least one per class) from `model`, classes in proportion to the weights
    `scope` gives them; returns what `_sample_logits` returns."""
    if n < 1:
        raise ValueError(f"stats_samples must be at least 1, got {n}")
    counts = model.counts
    if isinstance(scope, dict):
        weights = {int(c): float(v) for c, v in scope.items() if int(c) in counts}
    else:
        weights = model.recent if scope == "task" else counts
    classes = [c for c in model.active_rows.tolist() if weights.get(c, 0) > 0]
    if not classes:
        where = "the current task of the statistics" if scope == "task" else "the statistics (with a positive weight)"
        raise ValueError(f"calibrate: {where} hold none of the active classes")
    means = np.stack([model.means[c] for c in classes])
    held = np.array([weights[c] for c in classes], dtype=np.float64)
    per_class = np.maximum(1, np.round(n * held / held.sum())).astype(int)
    rng = np.random.default_rng(seed)
    which = np.repeat(np.arange(len(classes)), per_class)
    logits = means[which] + rng.standard_normal((len(which), len(model.root))) @ model.root.T
    targets = np.array([model.column[classes[k]] for k in which], dtype=np.int64)
    split = model.split
    return np.ascontiguousarray(logits[:, :split]), np.ascontiguousarray(logits[:, split:]), targets


def _unpack_lower(packed: np.ndarray, dim: int) -> np.ndarray:
    """The dense lower triangle (upper part zero) of a Gram held as `gram_lower`: the lower
    triangle column by column, i.e. the upper triangle row by row."""
    upper = np.zeros((dim, dim))
    upper[np.triu(np.ones((dim, dim), dtype=bool))] = packed
    return upper.T


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
    expansion = parts.get("expansion")
    dist.all_gather_object(gathered, (dim, expansion, local_ids), group=group)
    dims = sorted({d for d, _, _ in gathered})
    if len(dims) != 1:
        raise ValueError(f"all_reduce: the ranks' states have different dimensions {dims}")
    specs = sorted({str(e) for _, e, _ in gathered})
    if len(specs) != 1:
        raise ValueError(f"all_reduce: the ranks' states have different expansions {specs}")
    union = sorted(set().union(*(set(ids) for _, _, ids in gathered)))
    slot = {cid: k for k, cid in enumerate(union)}
    k = len(union)
    tri = dim * (dim + 1) // 2

    pieces = []
    for s in _SEGMENTS:
        seg = parts[s]
        if seg["n"] >= 2**53:
            raise ValueError("all_reduce: more than 2^53 samples cannot travel exactly as float64")
        counts = np.zeros(k)
        weights = np.zeros(k)
        sums = np.zeros((k, dim))
        for row, cid in enumerate(seg["class_ids"]):
            counts[slot[int(cid)]] = seg["class_counts"][row]
            weights[slot[int(cid)]] = seg["class_weights"][row]
            sums[slot[int(cid)]] = seg["class_sums"][row]
        head = np.array([seg["n"], seg["weight"]], dtype=np.float64)
        pieces += [head, seg["gram_lower"], seg["sum"], counts, weights, sums.ravel()]
    flat = torch.from_numpy(np.concatenate(pieces))
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else torch.device("cpu")
    flat = flat.to(device)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    tasks = torch.tensor([int(parts["tasks_begun"])], dtype=torch.int64, device=device)
    dist.all_reduce(tasks, op=dist.ReduceOp.MAX, group=group)
    flat = flat.cpu().numpy()

    out = {"dim": dim, "tasks_begun": int(tasks.item()), "expansion": expansion}
    at = 0

    def take(n):
        nonlocal at
        at += n
        return flat[at - n : at]

    for s in _SEGMENTS:
        n, weight = take(2)
        gram, total = take(tri).copy(), take(dim).copy()
        counts = np.rint(take(k)).astype(np.uint64)
        weights = take(k).copy()
        sums = take(k * dim).reshape(k, dim)
        present = counts > 0
        out[s] = {
            "n": int(round(n)),
            "weight": float(weight),
            "gram_lower": gram,
            "sum": total,
            "class_ids": np.array(union, dtype=np.int64)[present],
            "class_counts": counts[present],
            "class_weights": weights[present],
            "class_sums": sums[present].copy(),
        }
    return Stats._from_parts(out)


class Accumulator:
    """Statistics accumulated where the features are: on the tensors' device (CUDA, say), so
    no batch leaves it. `update(x, y)` adds XᵀX (or ZᵀZ for z = ReLU(x @ R) with `expand=`),
    the class sums and the counts on the device; every `fold_every` batches, and on `stats()`,
    the device totals are added exactly (float64) into a `headstart.Stats` and reset.

    Products are float32 by default (each batch shifted by its float32 mean, the shift undone
    in float64, as `Stats(precision="fast")` does); `precision="exact"` makes them float64.
    Totals, class sums and counts are float64 on the device in both.

        acc = Accumulator(768, device="cuda", expand=RandomFeatures(768, 8192))
        for x, y in loader:                      # x (B, 768) on the GPU, y (B,) integers
            acc.update(backbone(x), y)
        stats = acc.stats()                      # a headstart.Stats of the expanded features
        head = stats.solve(form="ridge")

    `stats=` folds into an existing `Stats` of the same dimension and expansion instead of a new
    one. Memory on the device: one (M, M) float64 total plus one (M, M) product.
    """

    def __init__(
        self,
        dim: int,
        device=None,
        expand: Optional[RandomFeatures] = None,
        precision: str = "fast",
        fold_every: int = 16,
        stats: Optional[Stats] = None,
    ):
        if precision not in ("fast", "exact"):
            raise ValueError(f"Accumulator: precision must be 'fast' or 'exact', got {precision!r}")
        if fold_every < 1:
            raise ValueError(f"Accumulator: fold_every must be at least 1, got {fold_every}")
        if expand is not None and not isinstance(expand, RandomFeatures):
            expand = RandomFeatures.of(expand)
        if expand is not None and expand.dim != dim:
            raise ValueError(f"Accumulator: expand takes {expand.dim} features but dim is {dim}")
        self.dim = int(dim)
        self.expand = expand
        self.features = expand.m if expand is not None else self.dim
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.product_dtype = torch.float32 if precision == "fast" else torch.float64
        self.fold_every = int(fold_every)
        if stats is None:
            stats = Stats(self.dim, expand=expand.native() if expand is not None else None)
        native = stats.expansion
        mine = expand.native() if expand is not None else None
        if stats.dim != self.features or native != mine:
            raise ValueError(f"Accumulator: stats= is {stats!r}, which does not match dim {dim} and expand {mine!r}")
        self._stats = stats
        self._reset()

    def _reset(self):
        m = self.features
        self._gram = torch.zeros(m, m, dtype=torch.float64, device=self.device)
        self._sum = torch.zeros(m, dtype=torch.float64, device=self.device)
        self._ids: list = []
        self._slot: dict = {}
        self._class_sums = torch.zeros(0, m, dtype=torch.float64, device=self.device)
        self._counts = torch.zeros(0, dtype=torch.int64, device=self.device)
        self._n = 0
        self._batches = 0

    @torch.no_grad()
    def update(self, x: torch.Tensor, y) -> None:
        """Adds a batch: `x` (B, dim) float tensor (moved to the accumulator's device if it is
        elsewhere), `y` (B,) integer labels (tensor, numpy or list). NaN/inf raises ValueError
        and adds nothing."""
        if not torch.is_tensor(x) or x.ndim != 2 or x.shape[1] != self.dim:
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"Accumulator.update: features must be a (B, {self.dim}) tensor, got {shape}")
        if not x.is_floating_point():
            raise ValueError(f"Accumulator.update: features must be floating point, got {x.dtype}")
        y = torch.as_tensor(y, device=self.device)
        if y.ndim != 1 or y.shape[0] != x.shape[0] or y.is_floating_point() or y.dtype == torch.bool:
            raise ValueError(f"Accumulator.update: labels must be ({x.shape[0]},) integers, got {tuple(y.shape)} {y.dtype}")
        if x.shape[0] == 0:
            return
        x = x.to(self.device)
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            row, col = (int(v) for v in bad.nonzero()[0])
            raise ValueError(f"Accumulator.update: batch row {row}, column {col}: feature value {x[row, col].item()} is not finite")
        z = self.expand(x.to(self.product_dtype)) if self.expand is not None else x.to(self.product_dtype)
        if not bool(torch.isfinite(z).all()):
            raise ValueError("Accumulator.update: the expanded features overflow float32; use precision='exact'")
        b = z.shape[0]
        total = z.sum(0, dtype=torch.float64)
        if self.product_dtype == torch.float32:
            shift = (total / b).to(torch.float32)
            zc = z - shift
            product = (zc.T @ zc).to(torch.float64)
            s64 = shift.to(torch.float64)
            product += torch.outer(s64, total) + torch.outer(total, s64) - b * torch.outer(s64, s64)
        else:
            product = z.T @ z
        ids, inverse = torch.unique(y.long(), return_inverse=True)
        ids = [int(v) for v in ids.tolist()]
        new = [c for c in ids if c not in self._slot]
        if new:
            for c in new:
                self._slot[c] = len(self._ids)
                self._ids.append(c)
            pad = torch.zeros(len(new), self.features, dtype=torch.float64, device=self.device)
            self._class_sums = torch.cat([self._class_sums, pad])
            self._counts = torch.cat([self._counts, torch.zeros(len(new), dtype=torch.int64, device=self.device)])
        slots = torch.tensor([self._slot[c] for c in ids], dtype=torch.int64, device=self.device)[inverse]
        self._class_sums.index_add_(0, slots, z.to(torch.float64))
        self._counts.index_add_(0, slots, torch.ones_like(slots))
        self._gram += product
        self._sum += total
        self._n += b
        self._batches += 1
        if self._batches >= self.fold_every:
            self.fold()

    def fold(self) -> None:
        """Adds the device totals into the `Stats` (exact: float64 values, float64 sums) and
        resets them."""
        if self._n == 0:
            return
        m = self.features
        rows, cols = torch.triu_indices(m, m, device=self.device)
        # Symmetrise: the product is symmetric up to rounding; gram_lower takes one triangle.
        gram = ((self._gram + self._gram.T) * 0.5)[rows, cols]
        order = sorted(range(len(self._ids)), key=lambda k: self._ids[k])
        counts = self._counts.cpu().numpy()[order]
        present = [k for k, c in zip(order, counts) if c > 0]
        empty = {
            "n": 0,
            "weight": 0.0,
            "gram_lower": np.zeros(m * (m + 1) // 2),
            "sum": np.zeros(m),
            "class_ids": np.zeros(0, dtype=np.int64),
            "class_counts": np.zeros(0, dtype=np.uint64),
            "class_weights": np.zeros(0),
            "class_sums": np.zeros((0, m)),
        }
        task = {
            "n": self._n,
            "weight": float(self._n),
            "gram_lower": gram.cpu().numpy(),
            "sum": self._sum.cpu().numpy(),
            "class_ids": np.array([self._ids[k] for k in present], dtype=np.int64),
            "class_counts": self._counts.cpu().numpy()[present].astype(np.uint64),
            "class_weights": self._counts.cpu().numpy()[present].astype(np.float64),
            "class_sums": self._class_sums.cpu().numpy()[present],
        }
        spec = self.expand.native().spec if self.expand is not None else None
        part = Stats._from_parts({"dim": m, "tasks_begun": 0, "expansion": spec, "before": empty, "task": task})
        self._stats.merge(part)
        self._reset()

    def stats(self) -> Stats:
        """Folds what is on the device and returns the `Stats` (the same object every call)."""
        self.fold()
        return self._stats
