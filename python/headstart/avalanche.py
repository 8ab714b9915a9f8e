"""An Avalanche plugin that starts each experience's new classifier rows from headstart's
calibrated least-squares head instead of random values.

    from avalanche.training.supervised import Naive
    from headstart.avalanche import HeadstartPlugin

    model = torch.nn.Sequential(backbone, IncrementalClassifier(512, 2))
    plugin = HeadstartPlugin(model[0], model[1])
    strategy = Naive(model=model, optimizer=optimizer, criterion=criterion, plugins=[plugin])
    for experience in benchmark.train_stream:
        strategy.train(experience)

At the start of every training experience, after the strategy has grown the model and built
its optimiser, the plugin streams the experience's own data (never the replay buffer) through
`backbone` without gradients into a `headstart.Stats`, solves the rows of the classes that are
new in the experience, calibrates them to the layer they join and writes them in place, so the
optimiser trains the written rows. Only statistics are kept between experiences, never samples.

Needs torch and avalanche-lib (`pip install ./python avalanche-lib`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from avalanche.core import SupervisedPlugin

from ._native import Stats
from .torch import Accumulator, RowInit, init_rows

__all__ = ["HeadstartPlugin", "ExperienceInit"]


@dataclass
class ExperienceInit:
    """What the plugin did at the start of one training experience.

    `experience`: the experience's index in its stream. `new_classes`: the classes whose rows
    were written (ascending; empty when the experience brought none). `samples`: the
    experience's samples streamed into the statistics. `init`: what `init_rows` wrote and
    fitted (None when nothing was written). `lam`: the λ the solve used. `persisted`: whether
    the statistics of earlier experiences were kept (see `persist`); `decay`: the factor they
    were multiplied by first (None: not decayed); `replayed`: the
    replay-buffer samples streamed when they were not. `seconds`: the plugin's wall time for
    this experience; `feature_seconds` of it went to the backbone and the statistics.
    """

    experience: int
    new_classes: list = field(default_factory=list)
    samples: int = 0
    init: Optional[RowInit] = None
    lam: Optional[float] = None
    persisted: bool = True
    decay: Optional[float] = None
    replayed: int = 0
    seconds: float = 0.0
    feature_seconds: float = 0.0


NORM_CAP = 2.0
"""The default `norm_cap` for a backbone the strategy trains (docs/results.md compares 1, 2, 4
and none)."""


class HeadstartPlugin(SupervisedPlugin):
    """Initialises the rows of each training experience's new classes with headstart's
    calibrated least-squares head (docs/results.md, "The recommended call").

    Works with every strategy built on Avalanche's supervised template (Naive, Replay, EWC,
    LwF, ...), on CPU and CUDA, with features from any layer.

    Args:
        backbone: a module or callable mapping a mini-batch of inputs to the classifier's input
            features, shape (batch, in_features), on the strategy's device. Modules are put in
            eval mode while the plugin streams (so batch-norm statistics and dropout are
            untouched) and restored after. A string names a submodule of `strategy.model`
            (e.g. "features", "0"), looked up at every experience.
        classifier: the `torch.nn.Linear` or Avalanche `IncrementalClassifier` whose rows are
            written, or the name of one in `strategy.model` (for strategies that replace the
            model object). An `IncrementalClassifier`'s layer is looked up at every
            experience, after the strategy has grown it; with masking, its active units form
            the softmax the calibration fits.
        lam: the solve's λ: None (the scale-free default, "rel"), "rel:R", or an absolute
            number (see `Stats.solve`).
        scope: "all" (G/N and the global mean over every experience the statistics hold) or
            "task" (the current experience only).
        calibrate: "stats" (one scale for the new rows fitted on draws from the
            class-conditional Gaussian of the classes the first batches hold, from the
            statistics alone), "sample" (fitted on a uniform reservoir sample of the streamed
            features, through the current backbone, dropped afterwards), False (the
            uncalibrated LS rows, logits of order 1/C), or "auto" (the default): "stats" for a
            backbone the strategy does not train, "sample" for one it trains (its features
            change, so real features of the experience describe them best). Either way the
            new rows are bounded by the old rows' typical confidence on their own classes
            (`init_rows(bound="typical")`), measured on draws of the old classes the
            statistics hold. When the statistics are rebuilt with a replay buffer (see
            `persist`), the fit weighs the experience's and the buffer's classes in the shares
            of a replay batch; otherwise it fits the experience's classes.
        calibrate_samples: draws ("stats") or sample rows ("sample") for the calibration.
        persist: keep the statistics across experiences (True; the state stays O(d² + C·d),
            no samples are kept), or rebuild them at every experience from the data the
            strategy trains on in it (False): the experience's data plus, when the strategy
            keeps a replay buffer (a plugin with `storage_policy.buffer`, as Replay has), the
            buffer's samples, all through the current backbone. "auto" (the default) persists.
            Rebuilt statistics hold no old class without a buffer, so the typical-confidence
            bound is lost and calibrated scales escalate (docs/results.md measures it).
        decay: a forgetting factor γ in (0, 1], None, or "auto" (the default: 0.5 for a
            backbone the strategy trains, None for one it does not). Given, the persisted
            statistics are multiplied by γ (`Stats.decay`) before each new experience is
            streamed: statistics of an older backbone fade instead of being dropped, and old
            classes stay in them (for `scope="all"` and for the calibration's bound).
            `persist=False` with a number is refused; with "auto" it means no decay.
        batch_size: mini-batch size for streaming (default: the larger of the strategy's
            `train_mb_size` and `eval_mb_size`, at least 64).
        max_logit: the calibration's bound, see `init_rows`.
        norm_cap: bound the calibrated new rows' median norm by this factor times the old
            active rows' median norm (`init_rows(max_norm_ratio=...)`): a number > 0, None, or
            "auto" (the default: NORM_CAP for a backbone the strategy trains, None for a
            frozen one). Without it, new rows much longer than the trained ones made a
            training backbone's logits escalate from experience to experience
            (docs/results.md, "With Avalanche").
        progress: show a progress bar while streaming: True, False, or None (only on a
            terminal, and only for experiences of more than 20 batches).
        seed: seeds the calibration's draws (plus the experience index).
        threads: threads for the statistics' batch products (None: every core).
        accumulate: "auto" (default) sums the products on the strategy's device when it is CUDA
            (`headstart.torch.Accumulator`, float64, folded exactly into the statistics at the end
            of each pass), so the features stay on the GPU; True does so on any device, False
            never (the features go to the CPU statistics batch by batch). Same statistics
            either way.

    After training, `stats` holds the statistics, `history` one `ExperienceInit` per training
    experience and `seconds` the plugin's total wall time.

    The experience's data is streamed as `experience.dataset` gives it (with its training
    transforms; other plugins' changes to the strategy's training dataset are not seen); an
    experience trained twice is streamed once. "auto" can only see a backbone's parameters
    when it is an `nn.Module`: for a plain callable around a training network, pass
    `persist=False, calibrate=False`.

    Raises ValueError before the experience's training starts, with nothing written, when the
    backbone's output does not match the classifier (shape or dimension), when its features
    are not finite, when a new class has no row in the classifier, or when the classifier is
    not part of `strategy.model`; TypeError for a classifier that is neither an `nn.Linear`
    nor has one as `.classifier`.

    Example (a runnable version is `python/tests/test_avalanche.py`):

        plugin = HeadstartPlugin(model.features, model.classifier, calibrate="stats")
        strategy = Replay(model=model, optimizer=optimizer, criterion=criterion, mem_size=200, plugins=[plugin])
        strategy.train(experience)
        print(plugin.history[-1].init.scale, plugin.seconds)
    """

    def __init__(
        self,
        backbone: Callable[[Any], torch.Tensor],
        classifier: torch.nn.Module,
        *,
        lam: Union[None, float, str] = None,
        scope: str = "all",
        calibrate: Union[str, bool] = "auto",
        calibrate_samples: int = 4096,
        persist: Union[bool, str] = "auto",
        decay: Union[None, float, str] = "auto",
        batch_size: Optional[int] = None,
        max_logit: float = 30.0,
        norm_cap: Union[None, float, str] = "auto",
        progress: Optional[bool] = None,
        seed: int = 0,
        threads: Optional[int] = None,
        accumulate: Union[bool, str] = "auto",
    ):
        super().__init__()
        if not (callable(backbone) or isinstance(backbone, str)):
            raise TypeError(f"backbone must be a module, a callable or a submodule's name, got {type(backbone).__name__}")
        if not isinstance(classifier, (torch.nn.Module, str)):
            raise TypeError(f"classifier must be a module or a submodule's name, got {type(classifier).__name__}")
        if scope not in ("all", "task"):
            raise ValueError(f"scope must be 'all' or 'task', got {scope!r}")
        if calibrate is True:
            calibrate = "stats"
        if calibrate not in ("auto", "stats", "sample", False, None):
            raise ValueError(f"calibrate must be 'auto', 'stats', 'sample' or False, got {calibrate!r}")
        if int(calibrate_samples) < 1:
            raise ValueError(f"calibrate_samples must be at least 1, got {calibrate_samples}")
        if persist not in (True, False, "auto"):
            raise ValueError(f"persist must be True, False or 'auto', got {persist!r}")
        if decay is not None and decay != "auto":
            if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not (0.0 < float(decay) <= 1.0):
                raise ValueError(f"decay must be a number in (0, 1], None or 'auto', got {decay!r}")
            if persist is False:
                raise ValueError("decay keeps the statistics across experiences (fading them); persist=False rebuilds them: choose one")
            decay = float(decay)
        if int(seed) < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        if accumulate not in (True, False, "auto"):
            raise ValueError(f"accumulate must be True, False or 'auto', got {accumulate!r}")
        self.accumulate = accumulate
        if batch_size is not None and int(batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.backbone = backbone
        self.classifier = classifier
        self.lam = lam
        self.scope = scope
        self.calibrate = calibrate or False
        self.calibrate_samples = int(calibrate_samples)
        self.persist = persist
        self.decay = decay
        self.batch_size = batch_size
        if norm_cap not in (None, "auto") and not (
            isinstance(norm_cap, (int, float)) and not isinstance(norm_cap, bool) and np.isfinite(norm_cap) and norm_cap > 0
        ):
            raise ValueError(f"norm_cap must be a positive number, None or 'auto', got {norm_cap!r}")
        self.max_logit = max_logit
        self.norm_cap = norm_cap
        self.progress = progress
        self.seed = seed
        self.threads = threads
        if not isinstance(classifier, str):
            self.layer()  # a classifier of the wrong kind fails here, not in the first experience
        self.stats: Optional[Stats] = None
        self.history: list[ExperienceInit] = []
        self.initialised: set[int] = set()
        self._streamed: set = set()
        self._persistent = True  # whether self.stats were built to persist
        self._model: Optional[torch.nn.Module] = None

    @property
    def seconds(self) -> float:
        """The plugin's total wall time so far, in seconds."""
        return sum(h.seconds for h in self.history)

    def _resolve(self, what, role: str):
        if not isinstance(what, str):
            return what
        if self._model is None:
            raise ValueError(f"HeadstartPlugin: the {role} {what!r} is a name; it is looked up in strategy.model during training")
        try:
            return self._model.get_submodule(what)
        except AttributeError:
            names = [n for n, _ in self._model.named_modules() if n][:12]
            raise ValueError(f"HeadstartPlugin: strategy.model has no submodule {what!r} (the {role}); it has {names}") from None

    def layer(self) -> torch.nn.Linear:
        """The `nn.Linear` the plugin writes into now (an `IncrementalClassifier`'s current one)."""
        classifier = self._resolve(self.classifier, "classifier")
        if isinstance(classifier, torch.nn.Linear):
            return classifier
        inner = getattr(classifier, "classifier", None)
        if isinstance(inner, torch.nn.Linear):
            return inner
        raise TypeError(
            f"classifier must be a torch.nn.Linear or an IncrementalClassifier (a module whose "
            f".classifier is an nn.Linear), got {type(classifier).__name__}; a "
            f"MultiHeadClassifier is not supported"
        )

    def active_rows(self) -> torch.Tensor:
        """The rows in the classifier's softmax: an `IncrementalClassifier`'s active units when
        it masks, else every row."""
        layer = self.layer()
        classifier = self._resolve(self.classifier, "classifier")
        units = getattr(classifier, "active_units", None)
        if getattr(classifier, "masking", False) and isinstance(units, torch.Tensor):
            return units.nonzero().flatten().cpu()
        return torch.arange(layer.out_features)

    # ------------------------------------------------------------------ the plugin's hook

    def before_training_exp(self, strategy, **kwargs):
        start = time.perf_counter()
        experience = strategy.experience
        index = int(getattr(experience, "current_experience", len(self.history)))
        record = ExperienceInit(experience=index)
        self._model = strategy.model if isinstance(strategy.model, torch.nn.Module) else None
        layer = self.layer()
        if self._model is not None and not any(p is layer.weight for p in self._model.parameters()):
            raise ValueError(
                "HeadstartPlugin: the classifier is not part of strategy.model (did the strategy "
                "replace the model?): pass the classifier's name in the model instead, e.g. "
                "HeadstartPlugin(backbone, 'classifier')"
            )
        stream = getattr(getattr(experience, "origin_stream", None), "name", None)
        key = (stream, index, id(experience.dataset))
        if key in self._streamed:  # trained again: its data is in the statistics
            record.seconds = time.perf_counter() - start
            self.history.append(record)
            return
        trains = self._backbone_trains(strategy)
        persist = True if self.persist == "auto" else self.persist
        decay = (0.5 if trains and persist else None) if self.decay == "auto" else self.decay
        record.persisted, record.decay = persist, decay
        calibrate = self.calibrate if self.calibrate != "auto" else ("sample" if trains else "stats")
        cap = (NORM_CAP if trains else None) if self.norm_cap == "auto" else self.norm_cap
        before, was_persistent = self.stats, self._persistent
        # Statistics rebuilt for one experience (older backbone weights, replayed samples) are
        # not a base to persist from.
        if self.stats is None or not persist or not self._persistent:
            self.stats = Stats(layer.in_features, threads=self.threads)
        else:
            self.stats = self.stats.copy()  # a failure part-way must leave the statistics as they were
            if decay is not None:
                self.stats.decay(decay)
        self.stats.begin_task()
        streamed = time.perf_counter()
        try:
            keep = self.calibrate_samples if calibrate == "sample" else 0
            mix = _Mix(*self._stream(strategy, experience.dataset, layer.in_features, index, keep))
            if not persist:
                for buffer, share in _replay_buffers(strategy):
                    streamed_buffer = self._stream(strategy, buffer, layer.in_features, index, keep, "the replay buffer")
                    mix.add_replay(*streamed_buffer, share)
                    record.replayed += len(buffer)
            record.feature_seconds = time.perf_counter() - streamed
            record.samples = self.stats.task_n - record.replayed
            new = sorted(set(mix.parts[0][0]) - self.initialised)  # the experience's own classes
            if new:
                self._write(layer, new, mix, calibrate, index, record, cap)
        except BaseException:
            self.stats, self._persistent = before, was_persistent
            raise
        self._streamed.add(key)
        self._persistent = persist
        record.seconds = time.perf_counter() - start
        self.history.append(record)

    # ------------------------------------------------------------------ the steps

    def _backbone_trains(self, strategy) -> bool:
        """Whether the strategy's optimiser trains a parameter of the backbone."""
        backbone = self._resolve(self.backbone, "backbone")
        if not isinstance(backbone, torch.nn.Module):
            return False
        optimizer = getattr(strategy, "optimizer", None)
        trained = {id(p) for group in getattr(optimizer, "param_groups", []) for p in group["params"]}
        return any(p.requires_grad and id(p) in trained for p in backbone.parameters())

    def _stream(self, strategy, dataset, dim: int, index: int, keep: int, what: str = "the experience"):
        """Streams `dataset` through the backbone into the statistics; returns its class counts
        and, for calibrate="sample", a uniform sample of its (features, labels), else None."""
        batch_size = self.batch_size or max(
            64, int(getattr(strategy, "train_mb_size", None) or 1), int(getattr(strategy, "eval_mb_size", None) or 1)
        )
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,
            collate_fn=getattr(dataset, "collate_fn", None),
            # A private generator: the loader itself draws nothing from torch's global stream
            # (random transforms in the dataset still do).
            generator=torch.Generator(),
        )
        device = torch.device(strategy.device)
        backbone = self._resolve(self.backbone, "backbone")
        module = backbone if isinstance(backbone, torch.nn.Module) else None
        modes = {m: m.training for m in module.modules()} if module is not None else {}
        reservoir = _Reservoir(keep, np.random.default_rng([self.seed, index, len(what)]))
        # On CUDA (or when asked), the products are summed on the device and folded into the
        # statistics exactly; the features leave the device only for a calibration sample.
        on_device = self.accumulate is True or (self.accumulate == "auto" and device.type == "cuda")
        acc = Accumulator(dim, device=device, precision="exact", stats=self.stats) if on_device else None
        counts: dict = {}
        bar = self._bar(len(loader), index)
        try:
            if module is not None:
                module.eval()
            with torch.no_grad():
                for batch_index, batch in enumerate(loader):
                    x, y = _unpack(batch, index, batch_index)
                    features = backbone(_to(x, device))
                    where = f"experience {index}, {what}, batch {batch_index}"
                    features = _check_features(features, dim, where, keep_device=on_device)
                    labels = y.detach().cpu().numpy().astype(np.int64, copy=False)
                    if labels.shape != (features.shape[0],):
                        raise ValueError(
                            f"HeadstartPlugin ({where}): {features.shape[0]} feature rows but labels of "
                            f"shape {labels.shape}"
                        )
                    try:
                        if acc is not None:
                            acc.update(features, labels)
                        else:
                            self.stats.update(features, labels)
                    except ValueError as e:
                        raise ValueError(f"HeadstartPlugin ({where}): {e}") from None
                    if acc is not None and keep:
                        features = features.cpu().numpy()
                    if keep:
                        reservoir.add(features, labels)
                    for c, n in zip(*np.unique(labels, return_counts=True)):
                        counts[int(c)] = counts.get(int(c), 0) + int(n)
                    if bar is not None:
                        bar.update(1)
            if acc is not None:
                acc.stats()  # folds what is left on the device into self.stats
        finally:
            if bar is not None:
                bar.close()
            if module is not None:
                for m, mode in modes.items():  # each submodule as it was (a frozen BatchNorm stays in eval)
                    m.train(mode)
        return counts, (reservoir.sample() if keep else None)

    def _write(self, layer, new, mix: "_Mix", calibrate, index: int, record: ExperienceInit, cap: Optional[float] = None):
        if max(new) >= layer.out_features or min(new) < 0:
            bad = min(new) if min(new) < 0 else max(new)
            raise ValueError(
                f"HeadstartPlugin (experience {index}): class {bad} has no row in the "
                f"classifier's {layer.out_features} outputs; use an IncrementalClassifier, or an "
                f"nn.Linear with a row per class"
            )
        active = self.active_rows()
        missing = sorted(set(new) - set(active.tolist()))
        if missing:
            raise ValueError(f"HeadstartPlugin (experience {index}): classes {missing} are masked out by the classifier")
        head = self.stats.solve(classes=new, lam=self.lam, scope=self.scope)
        # The calibration fits the data of the first training batches: the experience's classes,
        # plus the replayed ones in the share the replay loader gives them when a buffer was read.
        if calibrate == "stats":
            calibrate = self.stats
        elif calibrate == "sample":
            calibrate = mix.sample(self.calibrate_samples, np.random.default_rng([self.seed, index, 1]))
        else:
            calibrate = None
        record.init = init_rows(
            layer,
            head,
            calibrate=calibrate,
            active=active,
            max_logit=self.max_logit,
            stats_samples=self.calibrate_samples,
            stats_scope=mix.weights(),
            seed=self.seed + index,
            reference=self.stats,
            max_norm_ratio=cap,
        )
        record.new_classes = list(new)
        record.lam = head.lam
        self.initialised.update(new)

    def _bar(self, total: int, index: int):
        show = self.progress
        if show is None:
            show = total > 20 and sys.stderr.isatty()
        if not show:
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:  # avalanche-lib depends on tqdm; keep working without it
            return None
        return tqdm(total=total, desc=f"headstart: experience {index}", unit="batch", leave=False)


def _replay_buffers(strategy):
    """The non-empty replay buffers of the strategy's plugins (Avalanche's ReplayPlugin and
    other plugins with a `storage_policy` holding a `buffer` dataset), each with the share of a
    training batch it fills: batch_size_mem / (batch_size + batch_size_mem), both defaulting
    to the strategy's train_mb_size as ReplayPlugin does (so one half)."""
    buffers = []
    for plugin in getattr(strategy, "plugins", []):
        buffer = getattr(getattr(plugin, "storage_policy", None), "buffer", None)
        if buffer is not None and len(buffer) > 0:
            size = getattr(plugin, "batch_size", None) or strategy.train_mb_size
            size_mem = getattr(plugin, "batch_size_mem", None) or strategy.train_mb_size
            buffers.append((buffer, size_mem / (size + size_mem)))
    return buffers


class _Mix:
    """What the first training batches hold: the experience's classes and, per replay buffer,
    its classes in the share of the batch it fills. Gives the calibration's class weights
    (for draws from the statistics) and its sample (for calibrate="sample")."""

    def __init__(self, counts: dict, sample):
        self.parts = [(counts, sample, 1.0)]

    def add_replay(self, counts: dict, sample, share: float):
        self.parts = [(c, s, w * (1.0 - share)) for c, s, w in self.parts] + [(counts, sample, share)]

    def weights(self):
        """"task" (the experience alone), or {class: weight}: each part's share of the batch,
        split among its classes in proportion to their counts."""
        if len(self.parts) == 1:
            return "task"
        weights: dict = {}
        for counts, _, share in self.parts:
            total = sum(counts.values())
            for c, n in counts.items():
                weights[c] = weights.get(c, 0.0) + share * n / total
        return weights

    def sample(self, size: int, rng: np.random.Generator):
        """At most `size` rows in which each part holds its share: as many rows as the
        smallest part's sample allows at its share."""
        parts = [(sample, share) for _, sample, share in self.parts if sample is not None and share > 0]
        total = min([size] + [len(sample[1]) / share for sample, share in parts])
        xs, ys = [], []
        for (x, y), share in parts:
            take = min(len(y), max(1, int(round(total * share))))
            rows = rng.choice(len(y), size=take, replace=False)
            xs.append(x[rows])
            ys.append(y[rows])
        return np.concatenate(xs), np.concatenate(ys)


def _unpack(batch, index: int, batch_index: int):
    """(inputs, labels) of an Avalanche mini-batch: (x, y) or (x, y, task labels, ...)."""
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError(
        f"HeadstartPlugin (experience {index}, batch {batch_index}): expected (inputs, labels, ...) "
        f"mini-batches, got {type(batch).__name__}"
    )


def _to(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, (list, tuple)):
        return type(x)(_to(v, device) for v in x)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    return x


def _check_features(features, dim: int, where: str, keep_device: bool = False):
    """The backbone's output as a float32/float64 CPU array (or, with `keep_device`, a tensor
    where it is), checked against the classifier."""
    if not isinstance(features, torch.Tensor):
        raise ValueError(f"HeadstartPlugin ({where}): the backbone returned {type(features).__name__}, not a tensor")
    if features.ndim != 2:
        hint = " (flatten it, e.g. backbone = nn.Sequential(backbone, nn.Flatten()))" if features.ndim > 2 else ""
        raise ValueError(
            f"HeadstartPlugin ({where}): the backbone's output has shape {tuple(features.shape)}; "
            f"the classifier needs (batch, {dim}){hint}"
        )
    if features.shape[1] != dim:
        raise ValueError(
            f"HeadstartPlugin ({where}): the backbone gives {features.shape[1]} features per sample "
            f"but the classifier takes {dim}: pass the module whose output the classifier reads"
        )
    if not features.is_floating_point():
        features = features.double()
    elif features.dtype not in (torch.float32, torch.float64):
        features = features.float()
    if keep_device:
        return features.detach()
    return features.detach().cpu().numpy()


class _Reservoir:
    """A uniform sample of at most `size` rows of a stream (reservoir sampling, Algorithm R:
    the row at stream position p replaces a random slot with probability size/(p+1))."""

    def __init__(self, size: int, rng: np.random.Generator):
        self.size, self.rng, self.seen = size, rng, 0
        self.x: Optional[np.ndarray] = None
        self.y: Optional[np.ndarray] = None

    def add(self, x: np.ndarray, y: np.ndarray):
        if self.size == 0 or len(x) == 0:
            return
        if self.x is None:
            self.x = np.empty((self.size, x.shape[1]), dtype=np.float64)
            self.y = np.empty(self.size, dtype=np.int64)
        take = max(0, min(self.size - self.seen, len(x)))
        self.x[self.seen : self.seen + take] = x[:take]
        self.y[self.seen : self.seen + take] = y[:take]
        if take < len(x):
            rows = np.arange(take, len(x))
            slots = self.rng.integers(0, self.seen + rows + 1)
            kept = slots < self.size
            rows, slots = rows[kept], slots[kept]
            # Where two rows of the batch draw one slot, the later row wins, as in a row-by-row pass.
            last = len(slots) - 1 - np.unique(slots[::-1], return_index=True)[1]
            self.x[slots[last]] = x[rows[last]]
            self.y[slots[last]] = y[rows[last]]
        self.seen += len(x)

    def sample(self):
        filled = min(self.seen, self.size)
        return (self.x[:filled].copy(), self.y[:filled].copy()) if filled else None
