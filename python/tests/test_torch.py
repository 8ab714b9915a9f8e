"""headstart.torch: rows into nn.Linear, growing heads, head files. Skipped without torch."""

import copy

import numpy as np
import pytest
from conftest import make_data, rel_err

torch = pytest.importorskip("torch")

import headstart  # noqa: E402
from headstart.torch import grow, init_rows, load_head  # noqa: E402


def solved(classes=(3, 1), d=6):
    x, y = make_data(5, 300, d, [0, 1, 2, 3])
    s = headstart.Stats(d)
    s.update(x, y)
    return s.solve(classes=list(classes), lam=0.01)


def test_init_rows_writes_exactly_the_head_rows():
    torch.manual_seed(0)
    fc = torch.nn.Linear(6, 5)
    before = fc.weight.detach().clone()
    head = solved()
    result = init_rows(fc, head)
    assert result.rows.tolist() == [3, 1]
    assert (result.scale, result.source, result.loss_before) == (1.0, "none", None)
    assert rel_err(fc.weight.detach()[3].numpy(), head.weight[0]) < 1e-7
    assert rel_err(fc.bias.detach()[1].numpy(), head.bias[1:2]) < 1e-7
    untouched = [0, 2, 4]
    assert torch.equal(fc.weight.detach()[untouched], before[untouched])
    assert fc.weight.requires_grad  # still a trainable parameter
    x = torch.randn(4, 6)
    logits = fc(x)[:, [3, 1]].detach().double().numpy()
    expected = x.double().numpy() @ head.weight.T + head.bias
    assert rel_err(logits, expected) < 1e-6


def test_match_scales_new_rows_to_the_median_norm_of_the_others():
    fc = torch.nn.Linear(6, 5)
    with torch.no_grad():
        fc.weight.copy_(torch.arange(30, dtype=torch.float32).reshape(5, 6) / 3)
    others = fc.weight.detach()[[0, 2, 4]].double().norm(dim=1).median().item()
    head = solved()
    init_rows(fc, head, norm="match")
    norms = fc.weight.detach()[[3, 1]].double().norm(dim=1)
    assert np.allclose(norms.numpy(), others, rtol=1e-6)
    # The bias scales with its row, so each new class's decision function keeps its direction.
    scale = norms[0].item() / np.linalg.norm(head.weight[0])
    assert np.isclose(fc.bias.detach()[3].item(), head.bias[0] * scale, rtol=1e-5)


def test_init_rows_checks_before_it_writes():
    fc = torch.nn.Linear(6, 3)
    before = fc.weight.detach().clone()
    with pytest.raises(ValueError, match="class id 3 is outside"):
        init_rows(fc, solved())
    with pytest.raises(ValueError, match="layer takes 7"):
        init_rows(torch.nn.Linear(7, 5), solved())
    with pytest.raises(ValueError, match="rows the head does not replace"):
        init_rows(torch.nn.Linear(6, 2), solved(classes=(0, 1)), norm="match")
    with pytest.raises(ValueError, match="no bias"):
        init_rows(torch.nn.Linear(6, 5, bias=False), solved())
    assert torch.equal(fc.weight.detach(), before)


def test_grow_keeps_old_rows():
    fc = torch.nn.Linear(6, 3, dtype=torch.float64)
    grown = grow(fc, 5)
    assert grown.weight.shape == (5, 6) and grown.weight.dtype == torch.float64
    assert torch.equal(grown.weight.detach()[:3], fc.weight.detach())
    assert torch.equal(grown.bias.detach()[:3], fc.bias.detach())
    with pytest.raises(ValueError):
        grow(fc, 2)


def test_load_head_finds_prefixes_and_ddp_names(tmp_path):
    head = solved()
    head.save(tmp_path / "plain.safetensors")
    head.save(tmp_path / "fc.safetensors", prefix="fc.")
    head.save(tmp_path / "ddp.safetensors", prefix="module.fc.")
    for name, prefix in [("plain", None), ("fc", None), ("fc", "fc."), ("ddp", None), ("ddp", "fc."), ("ddp", "module.fc.")]:
        loaded = load_head(tmp_path / f"{name}.safetensors", prefix=prefix)
        assert loaded.class_ids.tolist() == [3, 1], name
        assert rel_err(loaded.weight.numpy(), head.weight) < 1e-7, name
    fc = torch.nn.Linear(6, 5)
    init_rows(fc, load_head(tmp_path / "ddp.safetensors"))
    assert rel_err(fc.weight.detach()[1].numpy(), head.weight[1]) < 1e-7
    with pytest.raises(ValueError, match="no tensor"):
        load_head(tmp_path / "fc.safetensors", prefix="head.")


def layer_with_confident_old_rows(d=6, seed=0):
    """A 5-row layer whose rows 0, 2, 4 were trained with cross-entropy on classes 0, 2 of the
    data (large logits); rows 1 and 3 are new."""
    torch.manual_seed(seed)
    x, y = make_data(5, 300, d, [0, 1, 2, 3])
    fc = torch.nn.Linear(d, 5)
    old = np.isin(y, [0, 2])
    xt, yt = torch.from_numpy(x[old]).float(), torch.from_numpy(y[old])
    opt = torch.optim.Adam(fc.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(fc(xt)[:, [0, 2, 4]], (yt // 2)).backward()
        opt.step()
    return fc, x, y


def calibration_case():
    """The layer above, the statistics of all its data, and the LS rows of new classes 1 and 3."""
    fc, x, y = layer_with_confident_old_rows()
    stats = headstart.Stats(6)
    stats.update(x, y)
    return fc, x, y, stats, stats.solve(classes=[1, 3])


def brute_force_loss(fc, rows, weight, bias, x, y, active, scale):
    """Cross-entropy over `active` rows of the layer with `rows` replaced by scale·(weight, bias),
    in float64 numpy, sample by sample."""
    w = fc.weight.detach().double().numpy().copy()
    b = fc.bias.detach().double().numpy().copy()
    w[rows], b[rows] = scale * weight, scale * bias
    logits = (x @ w.T + b)[:, active]
    top = logits.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    pos = [active.index(int(v)) for v in y]
    return float(np.mean(lse - logits[np.arange(len(y)), pos]))


def test_calibration_on_a_sample_finds_the_cross_entropy_minimum():
    fc, x, y, stats, head = calibration_case()
    # Old and new classes in the sample, so the minimum is finite (a sample of the new classes
    # alone, which the LS rows separate here, would push the scale to its cap).
    sample = (x[:64], y[:64])
    active = [0, 1, 2, 3]
    before = fc.weight.detach().clone()
    result = init_rows(fc, head, calibrate=sample, active=active)
    assert result.source == "sample" and result.samples == 64 and not result.at_bound
    # The rows written are the LS rows times the fitted scale.
    assert rel_err(fc.weight.detach()[[1, 3]].double().numpy(), result.scale * head.weight) < 1e-6
    assert rel_err(fc.bias.detach()[[1, 3]].double().numpy(), result.scale * head.bias) < 1e-6
    assert torch.equal(fc.weight.detach()[[0, 2, 4]], before[[0, 2, 4]])
    # No scale on a fine grid does better, and the fitted loss is the one reported.
    grid = np.exp(np.linspace(np.log(result.scale / 20), np.log(result.scale * 20), 801))
    losses = [brute_force_loss(fc, [1, 3], head.weight, head.bias, *sample, active, a) for a in grid]
    fitted = brute_force_loss(fc, [1, 3], head.weight, head.bias, *sample, active, result.scale)
    assert fitted <= min(losses) + 1e-9
    assert abs(fitted - result.loss_after) < 1e-9
    assert abs(brute_force_loss(fc, [1, 3], head.weight, head.bias, *sample, active, 1.0) - result.loss_before) < 1e-9
    assert result.loss_after < result.loss_before


def test_calibration_from_statistics_lowers_the_switch_loss():
    fc, x, y, stats, head = calibration_case()
    new = np.isin(y, [1, 3])
    active = [0, 1, 2, 3]
    uncalibrated = brute_force_loss(fc, [1, 3], head.weight, head.bias, x[new], y[new], active, 1.0)
    result = init_rows(fc, head, calibrate=stats, active=active)
    assert result.source == "stats" and result.samples >= 4000 and result.scale > 1
    calibrated = brute_force_loss(fc, [1, 3], head.weight, head.bias, x[new], y[new], active, result.scale)
    assert calibrated < 0.6 * uncalibrated, (calibrated, uncalibrated)


def test_statistics_draws_follow_the_class_conditional_gaussian_of_the_data():
    # The logits drawn from the statistics must have, per class, the mean of the real data's
    # logits and the covariance W S Wᵀ, S the pooled within-class covariance computed by numpy
    # from the raw features.
    rng = np.random.default_rng(3)
    d, n = 9, 4000
    y = rng.integers(0, 4, n)
    mix = rng.standard_normal((d, d))
    x = 2.0 * rng.standard_normal((4, d))[y] + rng.standard_normal((n, d)) @ mix
    stats = headstart.Stats(d)
    stats.update(x[:1500], y[:1500])
    stats.begin_task()
    stats.update(x[1500:], y[1500:])
    fc = torch.nn.Linear(d, 4).double()
    head = stats.solve(classes=[2, 3])
    from headstart.torch import _stats_logits

    w = np.concatenate([fc.weight.detach().numpy()[:2], head.weight])
    b = np.concatenate([fc.bias.detach().numpy()[:2], head.bias])
    means = np.stack([x[y == c].mean(axis=0) for c in range(4)])
    within = sum(((x[y == c] - means[c]).T @ (x[y == c] - means[c])) for c in range(4)) / n
    args = (stats, fc, torch.from_numpy(head.weight), torch.from_numpy(head.bias), torch.tensor([2, 3]), torch.arange(4))
    fixed, fresh, targets = _stats_logits(*args, 400_000, "all", 0)
    logits = np.concatenate([fixed, fresh], axis=1)
    expected_cov = w @ within @ w.T
    scale = np.abs(expected_cov).max()
    for c in range(4):
        drawn = logits[targets == c]
        assert abs(len(drawn) / len(targets) - (y == c).mean()) < 1e-3
        assert np.abs(drawn.mean(axis=0) - (means[c] @ w.T + b)).max() < 0.02 * scale**0.5
        assert np.abs(np.cov(drawn.T) - expected_cov).max() < 0.03 * scale
    # "task": only the current task's classes, in proportion to their counts there.
    _, _, targets = _stats_logits(*args, 10_000, "task", 0)
    for c in range(4):
        assert abs((targets == c).mean() - (y[1500:] == c).mean()) < 1e-3


def test_calibration_input_is_checked_before_anything_is_written():
    fc, x, y, stats, head = calibration_case()
    before_w, before_b = fc.weight.detach().clone(), fc.bias.detach().clone()
    nan = x[:8].copy()
    nan[5, 2] = np.nan
    cases = [
        ((x[:0], y[:0]), None, "empty"),
        ((x[:8], np.full(8, 4)), [0, 1, 2, 3], "label 4 .* not an active class"),
        ((x[:8, :5], y[:8]), None, r"shape \(8, 5\), expected \(n, 6\)"),
        ((nan, y[:8]), None, "row 5 is not finite"),
        ((x[:8], y[:7]), None, "labels of shape"),
        ((x[:8], y[:8].astype(np.float64)), None, "integers"),
        ("not a pair", None, "pair"),
        ((x[:8], y[:8]), [0, 2], r"classes \[1, 3\] are not in active"),
        ((x[:8], y[:8]), [0, 1, 3, 9], "outside the layer"),
    ]
    for calibrate, active, message in cases:
        with pytest.raises(ValueError, match=message):
            init_rows(fc, head, calibrate=calibrate, active=active)
    with pytest.raises(ValueError, match="choose one"):
        init_rows(fc, head, norm="match", calibrate=(x[:8], y[:8]))
    assert torch.equal(fc.weight.detach(), before_w) and torch.equal(fc.bias.detach(), before_b)


def test_calibration_accepts_tensors_and_stops_at_the_logit_cap():
    fc, x, y, stats, head = calibration_case()
    # Only the new rows in the softmax, on a sample they classify perfectly: the loss falls
    # for ever as the scale grows, so the fit stops where a logit reaches max_logit.
    new = np.isin(y, [1, 3])
    logits = x[new] @ head.weight.T + head.bias
    right = (np.array([1, 3])[logits.argmax(axis=1)] == y[new])
    xs, ys = torch.from_numpy(x[new][right][:32]), torch.from_numpy(y[new][right][:32])
    result = init_rows(fc, head, calibrate=(xs, ys), active=[1, 3], max_logit=10.0)
    assert result.at_bound
    peak = np.abs((xs.numpy() @ head.weight.T + head.bias) * result.scale).max()
    assert abs(peak - 10.0) < 1e-6


def test_statistics_draws_follow_given_class_weights():
    x, y = make_data(4, 2000, 6, [0, 1, 2, 3])
    stats = headstart.Stats(6)
    stats.update(x, y)
    fc = torch.nn.Linear(6, 4)
    head = stats.solve(classes=[2, 3])
    from headstart.torch import _stats_logits

    args = (stats, fc, torch.from_numpy(head.weight), torch.from_numpy(head.bias), torch.tensor([2, 3]), torch.arange(4))
    _, _, targets = _stats_logits(*args, 8000, {0: 1.0, 3: 3.0, 9: 5.0}, 0)  # 9: not in the statistics
    assert set(targets.tolist()) == {0, 3}
    assert abs((targets == 3).mean() - 0.75) < 1e-3
    for bad in ({0: -1.0}, {0: 0.0}, {0: float("nan")}):
        with pytest.raises(ValueError, match="class weights"):
            init_rows(fc, head, calibrate=stats, stats_scope=bad)


def margins_by_hand(logits, targets):
    """True logit minus the log-sum-exp of the other columns, sample by sample."""
    out = []
    for row, t in zip(logits, targets):
        others = np.delete(row, t)
        out.append(row[t] - (others.max() + np.log(np.exp(others - others.max()).sum())))
    return np.array(out)


def test_the_typical_bound_holds_new_rows_to_the_old_rows_median_margin():
    fc, x, y, stats, head = calibration_case()
    new = np.isin(y, [1, 3])
    old = ~new
    active = [0, 1, 2, 3]
    # A sample of the new classes alone: the LS rows separate it, so only a bound stops the fit.
    sample = (x[new][:200], y[new][:200])
    loose = init_rows(copy.deepcopy(fc), head, calibrate=sample, active=active, bound="max_logit")
    tight = init_rows(copy.deepcopy(fc), head, calibrate=sample, active=active, reference=stats)
    assert loose.margin_bound is None and tight.margin_bound is not None
    assert tight.at_bound and tight.scale < loose.scale
    # The bound by hand: the old rows' median margin among the old rows on old-class data
    # (the statistics' draws estimate it; the raw old-class rows give it directly).
    w, b = fc.weight.detach().double().numpy(), fc.bias.detach().double().numpy()
    by_hand = np.median(margins_by_hand((x[old] @ w.T + b)[:, [0, 2]], (y[old] == 2).astype(int)))
    assert abs(tight.margin_bound - by_hand) < 0.1 * abs(by_hand) + 0.05, (tight.margin_bound, by_hand)
    # At the fitted scale, the new rows' median margin on the sample equals the bound.
    w2, b2 = w.copy(), b.copy()
    w2[[1, 3]], b2[[1, 3]] = tight.scale * head.weight, tight.scale * head.bias
    col = {c: k for k, c in enumerate(active)}
    got = np.median(margins_by_hand((sample[0] @ w2.T + b2)[:, active], np.array([col[int(v)] for v in sample[1]])))
    assert abs(got - tight.margin_bound) < 1e-6 * max(1.0, abs(got)), (got, tight.margin_bound)
    # The sample's own old-class rows give the bound when no statistics are at hand.
    mixed = (x[:300], y[:300])
    own = init_rows(copy.deepcopy(fc), head, calibrate=mixed, active=active)
    keep = ~np.isin(y[:300], [1, 3])
    want = np.median(margins_by_hand((x[:300][keep] @ w.T + b)[:, [0, 2]], (y[:300][keep] == 2).astype(int)))
    assert abs(own.margin_bound - want) < 1e-9
    with pytest.raises(ValueError, match="bound must be"):
        init_rows(copy.deepcopy(fc), head, calibrate=stats, active=active, bound="largest")
    with pytest.raises(ValueError, match="reference must be"):
        init_rows(copy.deepcopy(fc), head, calibrate=sample, active=active, reference=sample)


def test_ten_experiences_with_a_trained_layer_keep_the_logit_scale_and_beat_random_rows():
    # Class-incremental training of a hidden ReLU layer and a head over 10 experiences of 2
    # classes, rehearsal-free. At every switch the default start (LS rows from decayed
    # statistics of the current layer's features, calibrated on a sample of the task through the
    # current layer, bounded by the statistics' old classes) and random
    # rows are written into copies of the same model state and scored on the same batch.
    # The new rows' logit scale (their median margin on that batch, computed here by hand)
    # must stay within 2x of the first switch's: training must not inflate it. The raw factor
    # on the LS rows is printed too: it also follows the LS rows' norm, which the trained
    # layer's features change.
    d, hidden, k = 12, 32, 20
    x, y = make_data(21, 4000, d, list(range(k)))
    x, y = torch.from_numpy(x).float(), torch.from_numpy(y)
    torch.manual_seed(0)
    body = torch.nn.Sequential(torch.nn.Linear(d, hidden), torch.nn.ReLU())
    fc = torch.nn.Linear(hidden, k)
    stats = headstart.Stats(hidden)
    gen = torch.Generator().manual_seed(1)
    factors, margins, ratios = [], [], []
    ce = torch.nn.functional.cross_entropy
    for t in range(10):
        new = [2 * t, 2 * t + 1]
        live = torch.arange(2 * t + 2)
        mine = torch.isin(y, torch.tensor(new))
        xt, yt = x[mine], y[mine]
        with torch.no_grad():
            h = body(xt).numpy()
        if t:
            stats.decay(0.5)
            stats.begin_task()
        stats.update(h, yt.numpy())
        first = torch.randint(0, len(yt), (64,), generator=gen)
        random_fc = copy.deepcopy(fc)
        fresh = torch.nn.Linear(hidden, 2)
        with torch.no_grad():
            random_fc.weight[new], random_fc.bias[new] = fresh.weight, fresh.bias
        calib = torch.randint(0, len(yt), (256,), generator=gen)
        with torch.no_grad():
            sample = (body(xt[calib]), yt[calib])
        result = init_rows(fc, stats.solve(classes=new), calibrate=sample, active=live, reference=stats)
        if t:
            with torch.no_grad():
                feats = body(xt[first])
                logits = fc(feats)[:, live].double().numpy()
                ratios.append(float(ce(fc(feats)[:, live], yt[first])) / float(ce(random_fc(feats)[:, live], yt[first])))
            factors.append(result.scale)
            margins.append(float(np.median(margins_by_hand(logits, yt[first].numpy()))))
        opt = torch.optim.AdamW([*body.parameters(), *fc.parameters()], lr=1e-2)
        for _ in range(60):
            batch = torch.randint(0, len(yt), (64,), generator=gen)
            loss = ce(fc(body(xt[batch]))[:, live], yt[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    spread = lambda v: max(max(a / v[0], v[0] / a) for a in v)  # noqa: E731
    print(
        f"new rows' median margins {np.round(margins, 2)} (spread {spread(margins):.2f}x); factors "
        f"{np.round(factors, 1)} (spread {spread(factors):.2f}x); loss ratios to random {np.round(ratios, 3)}"
    )
    assert min(margins) > 0 and spread(margins) <= 2.0, margins
    assert max(ratios) <= 1.0, ratios


def test_max_norm_ratio_bounds_new_rows_by_the_old_rows_median_norm():
    fc, x, y, stats, head = calibration_case()
    active = [0, 1, 2, 3]
    free = init_rows(copy.deepcopy(fc), head, calibrate=stats, active=active, bound="max_logit")
    layer = copy.deepcopy(fc)
    capped = init_rows(layer, head, calibrate=stats, active=active, max_norm_ratio=1.0, bound="max_logit")
    norms = layer.weight.detach().double().norm(dim=1).numpy()
    old = np.median(fc.weight.detach().double().norm(dim=1).numpy()[[0, 2]])
    assert free.scale * np.median(np.linalg.norm(head.weight, axis=1)) > old  # the cap binds here
    assert capped.at_bound and abs(np.median(norms[[1, 3]]) - old) < 1e-5 * old
    # No other row at all: the norm of PyTorch's default initialisation, 1/sqrt(3).
    lone = torch.nn.Linear(6, 2)
    two_ids = headstart.Stats(6)
    xs, ys = x[np.isin(y, [1, 3])], y[np.isin(y, [1, 3])]
    two_ids.update(xs, (ys == 3).astype(np.int64))
    two = two_ids.solve()
    result = init_rows(lone, two, calibrate=(xs, (ys == 3).astype(np.int64)), max_norm_ratio=1.0, bound="max_logit")
    got = np.median(lone.weight.detach().double().norm(dim=1).numpy())
    assert result.at_bound and abs(got - 1 / np.sqrt(3)) < 1e-5
    for bad in [0, -1.0, float("inf"), "norm", True]:
        with pytest.raises(ValueError, match="max_norm_ratio must be"):
            init_rows(copy.deepcopy(fc), head, calibrate=stats, active=active, max_norm_ratio=bad)
        with pytest.raises(ValueError, match="max_scale must be"):
            init_rows(copy.deepcopy(fc), head, calibrate=stats, active=active, max_scale=bad)
    # A looser ratio that does not bind leaves the free fit.
    wide = copy.deepcopy(fc)
    loose = init_rows(wide, head, calibrate=stats, active=active, max_norm_ratio=2.0, bound="max_logit")
    assert np.median(wide.weight.detach().double().norm(dim=1).numpy()[[1, 3]]) <= 2 * old * (1 + 1e-6)
    assert loose.scale == free.scale or loose.at_bound
