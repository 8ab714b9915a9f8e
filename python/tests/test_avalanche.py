"""headstart.avalanche: the plugin inside real Avalanche strategies. Skipped without torch and
avalanche-lib (`pip install avalanche-lib`)."""

import copy
import warnings

import numpy as np
import pytest
from conftest import make_data, nc_reference, rel_err

torch = pytest.importorskip("torch")
pytest.importorskip("avalanche")

import headstart  # noqa: E402
from avalanche.benchmarks.scenarios import class_incremental_benchmark  # noqa: E402
from avalanche.core import SupervisedPlugin  # noqa: E402
from avalanche.models import IncrementalClassifier  # noqa: E402
from avalanche.training.plugins import EvaluationPlugin  # noqa: E402
from avalanche.training.supervised import Naive, Replay  # noqa: E402
from headstart.avalanche import HeadstartPlugin  # noqa: E402
from headstart.torch import init_rows  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")
D = 16
ORDER = [3, 7, 0, 9, 4, 1, 8, 2, 6, 5]


def dataset(x, y):
    """A tensor dataset with `targets`; the benchmark adds task labels (mini-batches (x, y, t))."""
    d = torch.utils.data.TensorDataset(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y))
    d.targets = [int(v) for v in y]
    return d


@pytest.fixture(scope="module")
def split():
    """Ten well-separated classes, 70/30 train/test, as numpy arrays."""
    x, y = make_data(11, 2000, D, list(range(10)))
    return x[:1400], y[:1400], x[1400:], y[1400:]


def benchmark(split):
    xtr, ytr, xte, yte = split
    return class_incremental_benchmark(
        {"train": dataset(xtr, ytr), "test": dataset(xte, yte)}, class_order=ORDER, num_experiences=5
    )


class Spy(SupervisedPlugin):
    """Snapshots the classifier's layer and the torch RNG at the start of every experience, and
    records the loss of each experience's first mini-batch and the iterations trained."""

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier
        self.weights, self.biases, self.active, self.rng = [], [], [], []
        self.first_losses, self.iterations, self._first = [], 0, False

    def before_training_exp(self, strategy, **kwargs):
        layer = self.classifier.classifier
        self.weights.append(layer.weight.detach().clone())
        self.biases.append(layer.bias.detach().clone())
        self.active.append(self.classifier.active_units.nonzero().flatten().cpu())
        self.rng.append(torch.get_rng_state())
        self._first = True

    def before_backward(self, strategy, **kwargs):
        if self._first:
            self.first_losses.append(float(strategy.loss))
            self._first = False
        self.iterations += 1


def run(split, make_strategy=Naive, plugin_options=None, backbone=None, experiences=5, seed=0, first=(), **strategy_options):
    """Trains a fresh model over the benchmark; returns (model, spies before and after, plugin).
    `first`: plugins placed before all others."""
    torch.manual_seed(seed)
    backbone = backbone if backbone is not None else torch.nn.Identity()
    classifier = IncrementalClassifier(D, initial_out_features=2)
    model = torch.nn.Sequential(backbone, classifier)
    before, after = Spy(classifier), Spy(classifier)
    plugin = None
    plugins = [*first, before]
    if plugin_options is not None:
        plugin = HeadstartPlugin(backbone, classifier, **plugin_options)
        plugins.append(plugin)
    plugins.append(after)
    strategy = make_strategy(
        model=model,
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2),
        criterion=torch.nn.CrossEntropyLoss(),
        train_mb_size=64,
        train_epochs=2,
        eval_mb_size=128,
        plugins=plugins,
        evaluator=EvaluationPlugin(loggers=[]),
        **strategy_options,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for experience in benchmark(split).train_stream[:experiences]:
            strategy.train(experience)
    return model, before, after, plugin


def naive(model, plugins, **options):
    """A Naive strategy (AdamW, lr 1e-2) with no loggers."""
    return Naive(
        model=model,
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2),
        criterion=torch.nn.CrossEntropyLoss(),
        plugins=plugins,
        evaluator=EvaluationPlugin(loggers=[]),
        **options,
    )


def new_rows(k):
    return sorted(ORDER[2 * k : 2 * k + 2])


def test_writes_exactly_the_new_classes_rows(split):
    _, before, after, plugin = run(split, plugin_options={})
    assert [h.new_classes for h in plugin.history] == [new_rows(k) for k in range(5)]
    for k in range(5):
        rows = new_rows(k)
        w0, w1 = before.weights[k], after.weights[k]
        others = [r for r in range(w0.shape[0]) if r not in rows]
        assert torch.equal(w0[others], w1[others]) and torch.equal(before.biases[k][others], after.biases[k][others])
        assert not torch.equal(w0[rows], w1[rows])
        assert torch.isfinite(w1).all()
        # Streaming used a private generator: the strategy's random stream did not move.
        assert torch.equal(before.rng[k], after.rng[k])
        assert plugin.history[k].samples == sum(int((split[1] == c).sum()) for c in rows)
    assert plugin.stats.n == len(split[1])


def test_rows_match_stats_and_init_rows_by_hand(split):
    xtr, ytr = split[0], split[1]
    _, before, after, plugin = run(split, plugin_options={"calibrate_samples": 512, "seed": 3})
    stats = headstart.Stats(D)
    for k in range(5):
        rows = new_rows(k)
        mask = np.isin(ytr, rows)
        stats.begin_task()
        stats.update(xtr[mask], ytr[mask])
        layer = torch.nn.Linear(D, before.weights[k].shape[0])
        with torch.no_grad():
            layer.weight.copy_(before.weights[k])
            layer.bias.copy_(before.biases[k])
        head = stats.solve(classes=rows)
        fit = init_rows(layer, head, calibrate=stats, active=before.active[k], stats_samples=512, seed=3 + k)
        assert fit.source == "stats" and fit.scale > 1.0  # LS logits are ~1/C: calibration scales them up
        assert abs(plugin.history[k].init.scale - fit.scale) <= 1e-6 * fit.scale
        assert rel_err(after.weights[k][rows].numpy(), layer.weight.detach()[rows].numpy()) < 1e-5
        assert rel_err(after.biases[k][rows].numpy(), layer.bias.detach()[rows].numpy()) < 1e-5


def test_uncalibrated_rows_are_the_float64_least_squares_head(split):
    """Against an independent solve from the raw rows (numpy, float64): scope "all" is every
    sample seen so far; with persist=False only the experience's own."""
    xtr, ytr = split[0], split[1]
    for persist in (True, False):
        _, _, after, plugin = run(split, plugin_options={"calibrate": False, "lam": 0.05, "persist": persist})
        for k in range(5):
            rows = new_rows(k)
            seen = sorted(ORDER[: 2 * k + 2]) if persist else rows
            mask = np.isin(ytr, seen)
            w, b = nc_reference(xtr[mask], ytr[mask], rows, 0.05)
            assert plugin.history[k].init.scale == 1.0
            assert rel_err(after.weights[k][rows].numpy(), w) < 1e-5, (persist, k)
            assert rel_err(after.biases[k][rows].numpy(), b) < 1e-5, (persist, k)


def test_first_batch_loss_is_lower_naive_and_replay(split):
    for strategy, options in ((Naive, {}), (Replay, {"mem_size": 100})):
        _, base, _, _ = run(split, strategy, **options)
        _, ours, _, plugin = run(split, strategy, plugin_options={}, **options)
        without, with_ = np.mean(base.first_losses[1:]), np.mean(ours.first_losses[1:])
        assert with_ < 0.6 * without, (strategy.__name__, ours.first_losses, base.first_losses)
        assert all(a < b for a, b in zip(ours.first_losses[1:], base.first_losses[1:])), strategy.__name__
        # Replay trains on the buffer too, but only the experience's own data enters the statistics.
        assert [h.samples for h in plugin.history] == [int(np.isin(split[1], new_rows(k)).sum()) for k in range(5)]


def test_a_backbone_of_the_wrong_width_fails_before_training(split):
    narrow = torch.nn.Linear(D, 8)
    classifier = IncrementalClassifier(D, 2)
    model = torch.nn.Sequential(narrow, torch.nn.ReLU(), torch.nn.Linear(8, D), classifier)
    spy = Spy(classifier)
    strategy = naive(model, [HeadstartPlugin(narrow, classifier), spy], train_mb_size=32)
    with pytest.raises(ValueError, match="the backbone gives 8 features per sample but the classifier takes 16"):
        strategy.train(benchmark(split).train_stream[0])
    assert spy.iterations == 0 and spy.weights == []

    conv = torch.nn.Unflatten(1, (4, 4))
    with pytest.raises(ValueError, match=r"output has shape \(64, 4, 4\).*nn.Flatten"):
        model = torch.nn.Sequential(torch.nn.Identity(), classifier)
        naive(model, [HeadstartPlugin(conv, classifier)]).train(benchmark(split).train_stream[0])


def test_features_from_a_hidden_layer_and_the_backbone_mode_is_restored(split):
    hidden = torch.nn.Sequential(torch.nn.Linear(D, D), torch.nn.ReLU(), torch.nn.Dropout(0.5))
    seen_modes = []
    hidden.register_forward_hook(lambda m, i, o: seen_modes.append(m.training))
    _, _, _, plugin = run(split, plugin_options={}, backbone=hidden, experiences=2)
    assert hidden.training  # the strategy trains it; the plugin streamed in eval mode only
    assert False in seen_modes and True in seen_modes
    assert [h.new_classes for h in plugin.history] == [new_rows(0), new_rows(1)]
    assert plugin.history[1].samples > 0 and plugin.seconds > 0


def test_sample_calibration_and_a_plain_linear_classifier(split):
    torch.manual_seed(0)
    fc = torch.nn.Linear(D, 10)
    model = torch.nn.Sequential(torch.nn.Identity(), fc)
    plugin = HeadstartPlugin(model[0], fc, calibrate="sample", calibrate_samples=50)
    strategy = naive(model, [plugin], train_mb_size=64)
    for experience in benchmark(split).train_stream[:2]:
        strategy.train(experience)
    assert [h.init.source for h in plugin.history] == ["sample", "sample"]
    assert [h.init.samples for h in plugin.history] == [50, 50]
    assert plugin.active_rows().tolist() == list(range(10))


def test_bad_arguments_and_classifiers():
    from avalanche.models import MultiHeadClassifier

    with pytest.raises(TypeError, match="MultiHeadClassifier is not supported"):
        HeadstartPlugin(torch.nn.Identity(), MultiHeadClassifier(D, 2))
    with pytest.raises(ValueError, match="scope must be"):
        HeadstartPlugin(torch.nn.Identity(), torch.nn.Linear(D, 2), scope="experience")
    with pytest.raises(ValueError, match="calibrate must be"):
        HeadstartPlugin(torch.nn.Identity(), torch.nn.Linear(D, 2), calibrate="yes")
    with pytest.raises(TypeError, match="backbone must be"):
        HeadstartPlugin(3, torch.nn.Linear(D, 2))


def test_a_class_without_a_row_is_named(split):
    fc = torch.nn.Linear(D, 5)
    model = torch.nn.Sequential(torch.nn.Identity(), fc)
    strategy = naive(model, [HeadstartPlugin(model[0], fc)])
    before = copy.deepcopy(fc.state_dict())
    with pytest.raises(ValueError, match="class 7 has no row in the classifier's 5 outputs"):
        strategy.train(benchmark(split).train_stream[0])
    assert all(torch.equal(before[k], v) for k, v in fc.state_dict().items())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_rows_match_cpu(split):
    _, _, cpu, _ = run(split, plugin_options={"calibrate": False, "lam": 0.05}, experiences=2)
    torch.manual_seed(0)
    classifier = IncrementalClassifier(D, initial_out_features=2)
    model = torch.nn.Sequential(torch.nn.Identity(), classifier)
    spy = Spy(classifier)
    plugin = HeadstartPlugin(model[0], classifier, calibrate=False, lam=0.05)
    strategy = naive(model, [plugin, spy], train_mb_size=64, train_epochs=2, device="cuda")
    for experience in benchmark(split).train_stream[:2]:
        strategy.train(experience)
    for k in range(2):
        assert spy.weights[k].is_cuda
        rows = new_rows(k)
        assert rel_err(spy.weights[k][rows].cpu().numpy(), cpu.weights[k][rows].numpy()) < 1e-5


@pytest.mark.parametrize("name", ["EWC", "LwF", "SynapticIntelligence"])
def test_regularisation_strategies(split, name):
    import avalanche.training.supervised as supervised

    options = {"EWC": {"ewc_lambda": 1.0}, "LwF": {"alpha": 1.0, "temperature": 2.0}, "SynapticIntelligence": {"si_lambda": 1.0}}
    make = getattr(supervised, name)
    _, base, _, _ = run(split, make, experiences=3, **options[name])
    _, ours, _, plugin = run(split, make, plugin_options={}, experiences=3, **options[name])
    assert [h.new_classes for h in plugin.history] == [new_rows(k) for k in range(3)]
    assert np.mean(ours.first_losses[1:]) < 0.6 * np.mean(base.first_losses[1:]), (ours.first_losses, base.first_losses)


def test_submodules_by_name_and_an_experience_trained_twice(split):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Identity(), IncrementalClassifier(D, 2))
    plugin, spy = HeadstartPlugin("0", "1", calibrate=False, lam=0.05), Spy(model[1])
    strategy = naive(model, [plugin, spy], train_mb_size=64)
    stream = benchmark(split).train_stream
    strategy.train(stream[0])
    strategy.train(stream[0])
    assert plugin.stats.n == plugin.history[0].samples > 0  # streamed once
    assert plugin.history[1].samples == 0 and plugin.history[1].init is None
    strategy.train(stream[1])
    xtr, ytr = split[0], split[1]
    mask = np.isin(ytr, ORDER[:4])
    w, _ = nc_reference(xtr[mask], ytr[mask], new_rows(1), 0.05)
    assert rel_err(spy.weights[2][new_rows(1)].numpy(), w) < 1e-5

    with pytest.raises(ValueError, match="no submodule 'head'.*it has"):
        model = torch.nn.Sequential(torch.nn.Identity(), IncrementalClassifier(D, 2))
        naive(model, [HeadstartPlugin("0", "head")]).train(stream[0])


def test_a_classifier_outside_the_model_is_refused(split):
    classifier = IncrementalClassifier(D, 2)
    model = torch.nn.Sequential(torch.nn.Identity(), IncrementalClassifier(D, 2))
    with pytest.raises(ValueError, match="not part of strategy.model"):
        naive(model, [HeadstartPlugin(model[0], classifier)]).train(benchmark(split).train_stream[0])


class BufferSpy(SupervisedPlugin):
    """Records the replay buffer's (x, y) at the start of every experience."""

    def __init__(self):
        super().__init__()
        self.buffers = []

    def before_training_exp(self, strategy, **kwargs):
        from avalanche.training.plugins import ReplayPlugin

        replay = [p for p in strategy.plugins if isinstance(p, ReplayPlugin)][0]
        items = [replay.storage_policy.buffer[i] for i in range(len(replay.storage_policy.buffer))]
        x = np.stack([item[0].numpy() for item in items]) if items else np.zeros((0, D))
        y = np.array([int(item[1]) for item in items], dtype=np.int64)
        self.buffers.append((x, y))


def test_rebuilt_statistics_read_the_replay_buffer(split):
    """persist=False: each experience's statistics are its own data plus the replay buffer,
    checked against a float64 solve from those raw rows."""
    xtr, ytr = split[0], split[1]
    spy = BufferSpy()
    options = {"persist": False, "calibrate": False, "lam": 0.05}
    _, _, after, plugin = run(split, Replay, plugin_options=options, experiences=3, first=[spy], mem_size=60)
    assert [h.replayed for h in plugin.history] == [0, 60, 60]
    assert not any(h.persisted for h in plugin.history)
    for k in range(3):
        rows = new_rows(k)
        mask = np.isin(ytr, rows)
        bx, by = spy.buffers[k]
        x, y = np.concatenate([xtr[mask], bx]), np.concatenate([ytr[mask], by])
        w, b = nc_reference(x, y, rows, 0.05)
        assert rel_err(after.weights[k][rows].numpy(), w) < 1e-5, k
        assert rel_err(after.biases[k][rows].numpy(), b) < 1e-5, k


def test_a_training_backbone_decays_the_statistics_and_calibrates_on_a_sample(split):
    hidden = torch.nn.Sequential(torch.nn.Linear(D, D), torch.nn.ReLU())
    _, _, _, plugin = run(split, Replay, plugin_options={}, backbone=hidden, experiences=3, mem_size=60)
    assert [h.persisted for h in plugin.history] == [True] * 3
    assert [h.decay for h in plugin.history] == [0.5] * 3
    assert [h.replayed for h in plugin.history] == [0, 0, 0]
    assert [h.init.source for h in plugin.history] == ["sample"] * 3
    assert all(h.init.margin_bound is not None for h in plugin.history[1:])
    # Rebuilding on request reads the replay buffer and does not decay.
    _, _, _, plugin = run(split, Replay, plugin_options={"persist": False}, backbone=hidden, experiences=3, mem_size=60)
    assert [h.persisted for h in plugin.history] == [False] * 3
    assert [h.decay for h in plugin.history] == [None] * 3
    assert [h.replayed for h in plugin.history] == [0, 60, 60]
    frozen = torch.nn.Sequential(torch.nn.Linear(D, D), torch.nn.ReLU()).requires_grad_(False)
    _, _, _, plugin = run(split, Replay, plugin_options={}, backbone=frozen, experiences=3, mem_size=60)
    assert [h.persisted for h in plugin.history] == [True] * 3
    assert [h.decay for h in plugin.history] == [None] * 3
    assert [h.replayed for h in plugin.history] == [0, 0, 0]
    assert [h.init.source for h in plugin.history] == ["stats"] * 3


def test_decay_fades_the_statistics_of_a_training_backbone(split):
    hidden = torch.nn.Sequential(torch.nn.Linear(D, D), torch.nn.ReLU())
    _, _, _, plugin = run(split, Naive, plugin_options={"decay": 0.5}, backbone=hidden, experiences=3)
    assert [h.persisted for h in plugin.history] == [True] * 3
    assert [h.init.source for h in plugin.history] == ["sample"] * 3
    # Every experience's samples weigh half as much as the next one's: 0.25, 0.5, 1.
    sizes = [h.samples for h in plugin.history]
    assert plugin.stats.n == sum(sizes)
    assert abs(plugin.stats.weight - (0.25 * sizes[0] + 0.5 * sizes[1] + sizes[2])) < 1e-9
    first = sorted(ORDER[:2])
    assert abs(plugin.stats.class_weight(first[0]) - 0.25 * plugin.stats.class_count(first[0])) < 1e-9
    # The old rows' typical confidence bounded the new rows from the second experience on.
    assert plugin.history[0].init.margin_bound is None
    assert all(h.init.margin_bound is not None for h in plugin.history[1:])
    for bad in [0, 1.5, -1, float("nan"), "0.5", True]:
        with pytest.raises(ValueError, match="decay must be"):
            HeadstartPlugin(torch.nn.Identity(), torch.nn.Linear(D, 2), decay=bad)
    with pytest.raises(ValueError, match="choose one"):
        HeadstartPlugin(torch.nn.Identity(), torch.nn.Linear(D, 2), decay=0.9, persist=False)
    for bad in [0, -2, float("nan"), "2", True]:
        with pytest.raises(ValueError, match="norm_cap must be"):
            HeadstartPlugin(torch.nn.Identity(), torch.nn.Linear(D, 2), norm_cap=bad)


def test_a_training_backbone_gets_new_rows_at_most_twice_the_old_rows_norm(split):
    hidden = torch.nn.Sequential(torch.nn.Linear(D, D), torch.nn.ReLU())
    _, before, after, _ = run(split, Naive, plugin_options={}, backbone=hidden, experiences=3)
    for k in (1, 2):
        old = before.active[k][~torch.isin(before.active[k], torch.tensor(new_rows(k)))]
        old_norm = np.median(before.weights[k][old].double().norm(dim=1).numpy())
        new_norm = np.median(after.weights[k][new_rows(k)].double().norm(dim=1).numpy())
        assert new_norm <= 2.0 * old_norm * (1 + 1e-5), (k, new_norm, old_norm)


def test_the_calibration_mix_follows_the_replay_batch():
    from headstart.avalanche import _Mix

    mix = _Mix({3: 100, 7: 300}, None)
    assert mix.weights() == "task"
    mix.add_replay({1: 20, 5: 20}, None, 0.5)
    assert mix.weights() == {3: 0.125, 7: 0.375, 1: 0.25, 5: 0.25}


def test_the_reservoir_is_uniform():
    from headstart.avalanche import _Reservoir

    hits = np.zeros(1000)
    for rep in range(400):
        reservoir = _Reservoir(50, np.random.default_rng(rep))
        values = np.arange(1000, dtype=np.float64)
        for start in range(0, 1000, 37):
            chunk = values[start : start + 37]
            reservoir.add(chunk[:, None], chunk.astype(np.int64))
        x, y = reservoir.sample()
        assert len(y) == 50 and len(set(y.tolist())) == 50 and np.array_equal(x[:, 0], y)
        hits[y] += 1
    # Each row is kept with probability 50/1000: 20 of 400 runs on average, in every part of the stream.
    for part in np.split(hits, 10):
        assert abs(part.mean() - 20) < 2.5, part.mean()


def test_the_calibration_sample_keeps_the_replay_share():
    from headstart.avalanche import _Mix

    rng = np.random.default_rng(0)
    experience = (rng.standard_normal((400, 3)), np.zeros(400, dtype=np.int64))
    buffer = (rng.standard_normal((60, 3)), np.ones(60, dtype=np.int64))
    mix = _Mix({0: 400}, experience)
    mix.add_replay({1: 60}, buffer, 0.5)
    x, y = mix.sample(4096, rng)
    assert len(y) == 120 and (y == 1).sum() == 60  # limited by the buffer's 60 rows at half
    x, y = mix.sample(50, rng)
    assert (y == 0).sum() == 25 and (y == 1).sum() == 25


def test_submodule_modes_survive_streaming_and_a_persist_switch_starts_afresh(split):
    hidden = torch.nn.Sequential(torch.nn.Linear(D, D), torch.nn.BatchNorm1d(D), torch.nn.ReLU())
    hidden[1].eval()  # deliberately frozen statistics, as fine-tuning recipes do
    classifier = IncrementalClassifier(D, 2)
    model = torch.nn.Sequential(hidden, classifier)
    plugin = HeadstartPlugin(hidden, classifier, persist=False)
    strategy = naive(model, [plugin], train_mb_size=64)
    stream = benchmark(split).train_stream
    strategy.train(stream[0])  # statistics rebuilt
    hidden[1].eval()  # Avalanche's train() puts the whole model in training mode; the recipe refreezes
    assert plugin.history[0].persisted is False
    plugin.persist = "auto"
    hidden.requires_grad_(False)  # now frozen: statistics persist from here, starting afresh
    strategy.train(stream[1])
    assert plugin.history[1].persisted is True
    assert plugin.stats.n == plugin.history[1].samples  # nothing from the rebuilt experience 0
    assert plugin.history[1].init.source == "stats"


def test_modes_are_restored_per_submodule():
    class Strategy:  # the attributes the plugin reads, without Avalanche's training loop
        pass

    hidden = torch.nn.Sequential(torch.nn.Linear(D, D), torch.nn.BatchNorm1d(D), torch.nn.Dropout(0.1))
    hidden.train()
    hidden[1].eval()
    plugin = HeadstartPlugin(hidden, torch.nn.Linear(D, 3))
    plugin.stats = headstart.Stats(D)
    strategy = Strategy()
    strategy.device, strategy.train_mb_size, strategy.eval_mb_size = "cpu", 8, 8
    data = torch.utils.data.TensorDataset(torch.randn(20, D), torch.randint(0, 3, (20,)))
    plugin._stream(strategy, data, D, 0, 0)
    assert [m.training for m in hidden] == [True, False, True]
    assert plugin.stats.n == 20


def test_the_readme_snippet_runs(split):
    """The README's "With Avalanche" block, run as written (the optimiser made for its model)."""
    import pathlib

    readme = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index("from avalanche.models import IncrementalClassifier")
    block = readme[start : readme.index("```", start)]
    block = block.replace("strategy = Replay(", "optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)\nstrategy = Replay(", 1)
    x = np.concatenate([split[0], np.zeros((len(split[0]), 512 - D))], axis=1)
    scope = {"torch": torch, "backbone": torch.nn.Identity(), "criterion": torch.nn.CrossEntropyLoss()}
    scope["benchmark"] = class_incremental_benchmark({"train": dataset(x, split[1])}, class_order=ORDER, num_experiences=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(block, "README.md", "exec"), scope)
    assert [h.new_classes for h in scope["plugin"].history] == [new_rows(k) for k in range(5)]


def test_accumulating_on_the_device_gives_the_same_statistics_and_rows(split):
    # accumulate=True takes the on-device path (`Accumulator`, as on CUDA) on CPU tensors; the
    # statistics and the written rows must match the CPU path's, for a frozen backbone
    # (calibration from the statistics) and a training one (a calibration sample).
    hidden = torch.nn.Sequential(torch.nn.Linear(D, D), torch.nn.ReLU())
    for backbone, options in [(None, {"calibrate": False, "lam": 0.05}), (hidden, {})]:
        runs = []
        for accumulate in (False, True):
            fresh = None if backbone is None else copy.deepcopy(backbone)
            runs.append(run(split, plugin_options={**options, "accumulate": accumulate}, backbone=fresh, experiences=3))
        (_, _, plain, p0), (_, _, device, p1) = runs
        a, b = p0.stats._parts(), p1.stats._parts()
        for segment in ("before", "task"):
            x, y = a[segment], b[segment]
            assert x["n"] == y["n"] and list(x["class_ids"]) == list(y["class_ids"])
            for key in ("gram_lower", "sum", "class_sums"):
                if x["n"]:
                    assert rel_err(y[key], x[key]) < 1e-10, (segment, key)
        for k in range(3):
            rows = new_rows(k)
            assert rel_err(device.weights[k][rows].numpy(), plain.weights[k][rows].numpy()) < 1e-6
    with pytest.raises(ValueError, match="accumulate"):
        HeadstartPlugin(torch.nn.Identity(), torch.nn.Linear(D, 2), accumulate="cuda")

