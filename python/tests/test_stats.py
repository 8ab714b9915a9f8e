"""headstart.Stats and Head against numpy float64 references."""

import pickle

import numpy as np
import pytest
from conftest import make_data, nc_reference, rel_err

import headstart

SOLVE_TOL = 1e-9  # float64 solve vs numpy float64 solve


def stats_of(x, y, batch=64, **kw):
    s = headstart.Stats(x.shape[1], **kw)
    for i in range(0, len(y), batch):
        s.update(x[i : i + batch], y[i : i + batch])
    return s


def test_gram_and_sums_match_numpy(data):
    x, y = data
    s = stats_of(x, y)
    parts = s._parts()["task"]
    d = x.shape[1]
    gram = np.zeros((d, d))
    col, row = np.triu_indices(d)  # the lower triangle column by column: (row >= col)
    gram[row, col] = parts["gram_lower"]
    assert rel_err(np.tril(gram), np.tril(x.T @ x)) < 1e-13
    assert list(parts["class_ids"]) == [-2, 0, 5, 9]
    for k, cid in enumerate(parts["class_ids"]):
        assert parts["class_counts"][k] == (y == cid).sum()
        assert rel_err(parts["class_sums"][k], x[y == cid].sum(axis=0)) < 1e-13
    assert s.n == 600 and s.dim == 7 and s.classes == [-2, 0, 5, 9]


@pytest.mark.parametrize("lam", [1e-3, 0.5])
@pytest.mark.parametrize("bias", [True, False])
def test_nc_head_matches_numpy(data, lam, bias):
    x, y = data
    head = stats_of(x, y).solve(lam=lam, bias=bias, classes=[9, -2, 5])
    w, b = nc_reference(x, y, [9, -2, 5], lam, bias)
    assert list(head.class_ids) == [9, -2, 5]
    assert head.weight.shape == (3, 7) and head.weight.dtype == np.float64
    assert rel_err(head.weight, w) < SOLVE_TOL
    assert rel_err(head.bias, b) < SOLVE_TOL


@pytest.mark.parametrize("lam, factor", [(None, 0.001), ("rel", 0.001), ("rel:0.3", 0.3)])
def test_a_relative_lambda_is_its_factor_times_the_mean_eigenvalue(data, lam, factor):
    x, y = data
    head = stats_of(x, y).solve(lam=lam, classes=[9, -2, 5])
    absolute = factor * np.trace(x.T @ x / len(y)) / x.shape[1]
    w, b = nc_reference(x, y, [9, -2, 5], absolute)
    assert abs(head.lam - absolute) < 1e-12 * absolute and head.lam_rule == f"rel:{factor}"
    assert rel_err(head.weight, w) < SOLVE_TOL and rel_err(head.bias, b) < SOLVE_TOL


def test_the_default_head_predicts_the_same_on_rescaled_features(data):
    x, y = data
    base = stats_of(x, y).solve()
    logits = x @ base.weight.T + base.bias
    for scale in (1e-3, 100.0):
        head = stats_of(x * scale, y).solve()
        assert rel_err((x * scale) @ head.weight.T + head.bias, logits) < 1e-9
    # An absolute lambda keeps its meaning and is not scale-free.
    fixed = [stats_of(x * s, y).solve(lam=0.05) for s in (1.0, 100.0)]
    assert rel_err((x * 100) @ fixed[1].weight.T + fixed[1].bias, x @ fixed[0].weight.T + fixed[0].bias) > 1e-3


def test_lambda_auto_picks_the_lowest_held_out_mse(data):
    x, y = data
    train, held_out = stats_of(x[:400], y[:400]), (x[400:], y[400:])
    grid = [1e-4, "rel:1e-3", "rel:1", 50.0]
    head = train.solve(lam="auto", val=held_out, grid=grid)

    def mse(h):
        targets = (y[400:, None] == h.class_ids[None, :]).astype(np.float64)
        return float((((x[400:] @ h.weight.T + h.bias) - targets) ** 2).sum(axis=1).mean())

    scores = [mse(train.solve(lam=g)) for g in grid]
    assert abs(mse(head) - min(scores)) < 1e-9
    assert head.lam_rule == ["0.0001", "rel:0.001", "rel:1.0", "50.0"][int(np.argmin(scores))]
    # A held-out Stats gives the same choice; the default grid is relative.
    assert head.lam == train.solve(lam="auto", val=stats_of(*held_out), grid=grid).lam
    assert train.solve(lam="auto", val=held_out).lam_rule.startswith("rel:")
    for bad, message in [
        (dict(lam="auto"), "needs held-out data"),
        (dict(lam="auto", val=(x[:0], y[:0])), "empty"),
        (dict(lam="auto", val="nope"), "pair"),
        (dict(lam=0.1, val=held_out), "only apply"),
        (dict(lam="rel:-1"), "≥ 0"),
        (dict(lam="relative"), "not a number"),
        (dict(lam=float("nan")), "finite"),
        (dict(lam=True), "bool"),
        (dict(lam="auto", val=held_out, grid=["auto"]), "not a grid point"),
    ]:
        with pytest.raises(ValueError, match=message):
            train.solve(**bad)


def test_ridge_head_matches_least_squares_with_a_bias_column(data):
    x, y = data
    head = stats_of(x, y).solve(form="ridge", lam=0.1)
    classes = sorted(set(y.tolist()))
    targets = (y[:, None] == np.array(classes)[None, :]).astype(np.float64)
    n = len(y)
    xc = x - x.mean(axis=0)
    w = np.linalg.solve(xc.T @ xc / n + 0.1 * np.eye(x.shape[1]), xc.T @ (targets - targets.mean(axis=0)) / n).T
    b = targets.mean(axis=0) - w @ x.mean(axis=0)
    assert rel_err(head.weight, w) < SOLVE_TOL
    assert rel_err(head.bias, b) < SOLVE_TOL


def test_float32_input_is_read_in_place_and_widened_exactly(data):
    x, y = data
    x32 = x.astype(np.float32)
    s32 = stats_of(x32, y)
    s64 = stats_of(x32.astype(np.float64), y)
    assert_same_state(s32, s64)
    # Any layout is accepted (copied once, in row order) and integer labels of any width are
    # widened: the same state as from C-contiguous float32 rows and int64 labels.
    wide = np.zeros((len(y), 14), dtype=np.float32)
    wide[:, ::2] = x32
    strided, fortran, reversed_rows = wide[:, ::2], np.asfortranarray(x32), x32[::-1]
    for a in (strided, fortran, reversed_rows):
        assert not a.flags.c_contiguous
    assert not strided.flags.f_contiguous
    s, reference = headstart.Stats(7), headstart.Stats(7)
    s.update(strided, y.astype(np.int16))
    s.update(fortran, y.astype(np.int8))
    s.update(reversed_rows, y[::-1])
    s.update(wide[::2, ::2], y[::2])  # strided in both directions
    for a, labels in [(strided, y), (fortran, y), (reversed_rows, y[::-1]), (wide[::2, ::2], y[::2])]:
        reference.update(np.ascontiguousarray(a), np.ascontiguousarray(labels, dtype=np.int64))
    assert_same_state(s, reference)
    assert s.n == 2100
    s.retract(wide[::2, ::2], y[::2])  # retract reads the same way
    reference.retract(np.ascontiguousarray(wide[::2, ::2]), y[::2].copy())
    assert_same_state(s, reference)
    assert s.n == 1800


def assert_same_state(a, b, rtol=1e-13):
    """Counts and class ids exactly, sums to f64 rounding: with several threads the chunk
    products are added in the order workers finish (Stats.threads)."""
    pa, pb = a._parts(), b._parts()
    assert pa["dim"] == pb["dim"]
    for segment in ("before", "task"):
        sa, sb = pa[segment], pb[segment]
        assert sa["n"] == sb["n"] and list(sa["class_ids"]) == list(sb["class_ids"])
        assert list(sa["class_counts"]) == list(sb["class_counts"])
        for key in ("gram_lower", "sum", "class_sums"):
            x, y = np.asarray(sa[key], dtype=float), np.asarray(sb[key], dtype=float)
            assert x.shape == y.shape and np.allclose(x, y, rtol=rtol, atol=0), key


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int64, np.float16, np.bool_, np.complex64, np.longdouble])
def test_features_other_than_float32_or_float64_are_refused_like_the_cli(data, dtype):
    x, y = data
    s = stats_of(x, y)
    before = s.copy()
    name = np.dtype(dtype).name
    if name in ("float64", "float32"):  # np.longdouble is float64 on some platforms
        pytest.skip(f"np.longdouble is {name} here")
    message = rf"features must be float32 or float64.*got dtype {name}.*x\.astype\(np\.float32\)"
    bad = x[:4].astype(dtype)
    with pytest.raises(ValueError, match=message):
        s.update(bad, y[:4])
    with pytest.raises(ValueError, match=message):
        s.retract(bad, y[:4])
    with pytest.raises(ValueError, match=message):
        s.solve(lam="auto", val=(bad, y[:4]))
    assert s == before
    # Both float types pass in either byte order and from a list; labels of any integer dtype.
    s.update(x[:4].astype(">f4"), y[:4].astype(np.int8))
    s.update(x[:4].astype(">f8"), y[:4].astype(">u2"))
    s.update(x[:4].tolist(), y[:4].tolist())
    assert s.n == before.n + 12


def test_threads_sharing_one_stats_take_turns():
    """Concurrent update/solve/merge/getters from several threads wait for each other (no
    "Already borrowed") and add up to the sequential state."""
    import threading

    rng = np.random.default_rng(5)
    d, batch, workers = 96, 400, 4
    x = rng.standard_normal((8 * workers * batch // 2, d))
    y = rng.integers(0, 6, len(x))
    chunks = [(x[i : i + batch], y[i : i + batch]) for i in range(0, len(y), batch)]
    s = headstart.Stats(d)
    other = headstart.Stats(d)  # merged in (empty: the identity) while updates run
    failures = []
    start = threading.Barrier(workers)

    def work(k):
        try:
            start.wait()
            for xb, yb in chunks[k::workers]:
                s.update(xb, yb)
                s.solve(lam=0.1)
                s.merge(other)
                other.merge(headstart.Stats(d))
                assert s.n >= len(yb) and s.dim == d and s.classes and repr(s)
                s.threads = 0
                s.copy()
        except BaseException as e:  # PanicException is a BaseException
            failures.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
    assert s.n == len(y) and sorted(s.classes) == sorted(set(y.tolist()))
    parts = s._parts()["task"]
    gram = np.zeros((d, d))
    col, row = np.triu_indices(d)
    gram[row, col] = parts["gram_lower"]
    assert rel_err(np.tril(gram), np.tril(x.T @ x)) < 1e-12  # batches added in another order
    sequential = stats_of(x, y, batch=batch)
    assert rel_err(s.solve().weight, sequential.solve().weight) < 1e-10


def test_a_batch_written_during_update_never_puts_nan_into_the_state():
    """Another thread flips a value between NaN and 1 while updates run: every update is
    either refused (it saw the NaN) or adds finite values, never a NaN it did not check."""
    import threading
    import time

    rng = np.random.default_rng(7)
    x = rng.standard_normal((2048, 256))
    y = rng.integers(0, 3, len(x))
    s = headstart.Stats(256, threads=1)
    stop = threading.Event()

    def writer():
        while not stop.is_set():
            x[-1, -1] = np.nan
            x[-1, -1] = 1.0

    thread = threading.Thread(target=writer)
    thread.start()
    added = refused = 0
    deadline = time.monotonic() + 4.0
    try:
        while time.monotonic() < deadline and added + refused < 300:
            try:
                s.update(x, y)
                added += 1
            except ValueError as e:
                assert "NaN" in str(e) or "finite" in str(e), e
                refused += 1
            if added and not np.isfinite(s._parts()["task"]["gram_lower"]).all():
                break
    finally:
        stop.set()
        thread.join()
    parts = s._parts()["task"]
    assert np.isfinite(parts["gram_lower"]).all() and np.isfinite(parts["sum"]).all(), (added, refused)
    assert np.isfinite(parts["class_sums"]).all()
    assert added > 0


def test_merge_equals_one_stream_and_retract_undoes_update(data):
    x, y = data
    a, b = stats_of(x[:250], y[:250]), stats_of(x[250:], y[250:])
    a.merge(b)
    whole = stats_of(x, y)
    assert rel_err(a.solve().weight, whole.solve().weight) < 1e-12
    before = whole.copy()
    whole.update(x[:10], y[:10])
    whole.retract(x[:10], y[:10])
    assert rel_err(whole.solve().weight, before.solve().weight) < 1e-12
    a.merge(a)  # merging a state with itself doubles it
    assert a.n == 1200


def test_task_scope_uses_only_data_after_the_boundary(data):
    x, y = data
    s = stats_of(x[:300], y[:300])
    s.begin_task()
    s.update(x[300:], y[300:])
    assert (s.tasks_begun, s.task_n) == (1, 300)
    head = s.solve(scope="task", lam=0.01)
    classes = sorted(set(y[300:].tolist()))
    w, b = nc_reference(x[300:], y[300:], classes, 0.01)
    assert rel_err(head.weight, w) < SOLVE_TOL
    assert head.scope == "task" and head.samples == 300


def test_bad_input_raises_value_error_and_changes_nothing(data):
    x, y = data
    s = stats_of(x, y)
    before = s.copy()
    bad = x[:4].copy()
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match="row 2, column 3"):
        s.update(bad, y[:4])
    with pytest.raises(ValueError, match="columns"):
        s.update(x[:4, :5], y[:4])
    with pytest.raises(ValueError, match="labels"):
        s.update(x[:4], y[:3])
    with pytest.raises(ValueError, match="integers"):
        s.update(x[:4], y[:4].astype(np.float64))
    with pytest.raises(ValueError, match="2-D"):
        s.update(x[0], y[:1])
    with pytest.raises(ValueError, match="int64"):
        s.update(x[:1], np.array([2**63], dtype=np.uint64))
    with pytest.raises(ValueError, match="class 77"):
        s.retract(x[:1], np.array([77]))
    with pytest.raises(ValueError, match="42"):
        s.solve(classes=[42])
    with pytest.raises(ValueError, match="form"):
        s.solve(form="lasso")
    with pytest.raises(ValueError):
        headstart.Stats(0)
    with pytest.raises(ValueError, match="dimension"):
        s.merge(headstart.Stats(3))
    assert s == before


def test_files_round_trip_in_the_cli_formats(tmp_path, data):
    x, y = data
    s = stats_of(x, y)
    s.begin_task()
    s.update(x[:20], y[:20])
    s.save(tmp_path / "s.hs")
    back = headstart.Stats.load(tmp_path / "s.hs")
    assert back == s and back.tasks_begun == 1
    assert pickle.loads(pickle.dumps(s)) == s
    (tmp_path / "bad.hs").write_bytes(s.to_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated"):
        headstart.Stats.load(tmp_path / "bad.hs")
    with pytest.raises(OSError):
        headstart.Stats.load(tmp_path / "missing.hs")
    head = s.solve(lam=0.02)
    head.save(tmp_path / "h.safetensors", prefix="fc.")
    from headstart._safetensors import read_safetensors

    tensors, meta = read_safetensors((tmp_path / "h.safetensors").read_bytes())
    assert rel_err(tensors["fc.weight"], head.weight) < 1e-7  # stored as float32
    assert list(tensors["fc.class_ids"]) == list(head.class_ids)
    assert meta["form"] == "nc" and meta["prefix"] == "fc."


def test_parts_round_trip_and_are_checked(data):
    x, y = data
    s = stats_of(x, y)
    parts = s._parts()
    assert headstart.Stats._from_parts(parts) == s
    parts["task"]["class_counts"] = parts["task"]["class_counts"] + 1
    with pytest.raises(ValueError, match="add up"):
        headstart.Stats._from_parts(parts)


def test_fast_precision_is_close_to_exact(data):
    x, y = data
    x32 = x.astype(np.float32)
    fast = stats_of(x32, y, batch=256, precision="fast")
    exact = stats_of(x32, y, batch=256)
    assert fast.precision == "fast"
    assert rel_err(fast.solve().weight, exact.solve().weight) < 1e-5


def test_a_state_file_from_the_cli_loads(tmp_path):
    import os
    import subprocess

    binary = os.environ.get("HEADSTART_BIN")
    if not binary:
        pytest.skip("set HEADSTART_BIN to the headstart binary to check CLI interop")
    x, y = make_data(8, 200, 5, [1, 2])
    np.save(tmp_path / "x.npy", x.astype(np.float32))
    np.save(tmp_path / "y.npy", y)
    subprocess.run(
        [binary, "ingest", "--features", tmp_path / "x.npy", "--labels", tmp_path / "y.npy", "--state", tmp_path / "s.hs"],
        check=True,
        capture_output=True,
    )
    from_cli = headstart.Stats.load(tmp_path / "s.hs")
    here = stats_of(x.astype(np.float32), y)
    assert (from_cli.n, from_cli.classes) == (here.n, here.classes)
    # Batches of another size add in another order: equal up to float64 rounding.
    assert rel_err(from_cli.solve().weight, here.solve().weight) < 1e-12


def test_headstart_imports_without_pyarrow():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['pyarrow'] = None\n"
        "import numpy as np, headstart, headstart.ray\n"
        "s = headstart.Stats(2); s.update(np.ones((3, 2)), [1, 2, 3]); assert s.n == 3\n"
        "assert 'headstart._arrow' not in sys.modules and 'ray' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def weighted_nc_reference(x, y, w, classes, lam):
    """The nc head of weighted rows: every sum and count weighted by the row's weight."""
    x = np.asarray(x, dtype=np.float64)
    n_w = w.sum()
    means = np.stack([(w[y == k, None] * x[y == k]).sum(axis=0) / w[y == k].sum() for k in classes])
    a = (w[:, None] * x).T @ x / n_w + lam * np.eye(x.shape[1])
    wt = np.linalg.solve(a, means.T).T / len(classes)
    mu = (w[:, None] * x).sum(axis=0) / n_w
    return wt, 1.0 / len(classes) - wt @ mu


def test_decay_equals_a_weighted_solve_and_bad_factors_change_nothing(data):
    x, y = data
    s = stats_of(x[:200], y[:200])
    s.decay(0.5)
    s.update(x[200:400], y[200:400])
    s.decay(0.25)
    s.update(x[400:], y[400:])
    w = np.concatenate([np.full(200, 0.125), np.full(200, 0.25), np.ones(200)])
    assert s.n == 600 and abs(s.weight - w.sum()) < 1e-9
    for k in sorted(set(y.tolist())):
        assert abs(s.class_weight(k) - w[y == k].sum()) < 1e-9
    classes = sorted(set(y.tolist()))
    head = s.solve(lam=0.01)
    want_w, want_b = weighted_nc_reference(x, y, w, classes, 0.01)
    assert rel_err(head.weight, want_w) < SOLVE_TOL
    assert rel_err(head.bias, want_b) < SOLVE_TOL
    # Weights survive the parts (the torch all-reduce) and the state file.
    assert headstart.Stats._from_parts(s._parts()) == s
    assert headstart.Stats.from_bytes(s.to_bytes()).weight == s.weight
    before = s.copy()
    for bad in [0.0, 1.5, -0.1, float("nan"), float("inf")]:
        with pytest.raises(ValueError, match="decay"):
            s.decay(bad)
    assert s.class_weight(77) == 0.0 and s.class_count(77) == 0
    assert s == before and s.weight == before.weight
