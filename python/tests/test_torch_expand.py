"""headstart.torch.RandomFeatures, load_head's module and the on-device Accumulator, against
the native expansion and Stats. Skipped without torch; the CUDA cases without a GPU."""

import numpy as np
import pytest
from conftest import make_data, rel_err

torch = pytest.importorskip("torch")

import headstart  # noqa: E402
from headstart.torch import Accumulator, RandomFeatures, load_head  # noqa: E402

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.parametrize("d,m,seed", [(6, 10, 0), (50, 2500, 9), (3, 7, 2**64 - 1)])
def test_torch_regenerates_the_rust_matrix_bit_for_bit(d, m, seed):
    r = RandomFeatures(d, m, seed, block=512).matrix()
    native = headstart.RandomFeatures(d, m, seed).matrix()
    assert r.dtype == torch.float32 and tuple(r.shape) == (d, m)
    assert np.array_equal(r.numpy().view(np.uint32), native.view(np.uint32))
    # R is never stored with a model.
    assert RandomFeatures(d, m, seed).state_dict() == {}


def test_forward_matches_the_native_transform():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 20))
    rf = RandomFeatures(20, 128, seed=5)
    native = headstart.RandomFeatures(20, 128, seed=5)
    assert rel_err(rf(torch.from_numpy(x)).numpy(), native.transform(x)) < 1e-13
    x32 = x.astype(np.float32)
    assert rel_err(rf(torch.from_numpy(x32)).numpy(), native.transform(x32)) < 1e-5
    with pytest.raises(ValueError, match="expected 20"):
        rf(torch.zeros(2, 21))
    assert RandomFeatures.of(native).matrix().equal(rf.matrix())


def test_load_head_applies_the_expansion(tmp_path):
    x, y = make_data(2, 800, 10, [1, 3, 8])
    rf = headstart.RandomFeatures(10, 64, seed=2)
    s = headstart.Stats(10, expand=rf)
    s.update(x, y)
    head = s.solve(lam=0.01)
    head.save(tmp_path / "h.safetensors", prefix="fc.")
    module = load_head(tmp_path / "h.safetensors")
    assert isinstance(module, torch.nn.Module)
    assert module.expansion.m == 64 and module.weight.shape == (3, 64)
    logits = module(torch.from_numpy(x[:50]))
    want = rf.transform(x[:50]) @ head.weight.T + head.bias
    assert rel_err(logits.double().numpy(), want) < 1e-5  # weights stored as float32
    assert (logits.argmax(1).numpy() == want.argmax(1)).mean() > 0.95
    # A plain head is a plain linear map.
    plain = headstart.Stats(10)
    plain.update(x, y)
    plain.solve(lam=0.01).save(tmp_path / "p.safetensors")
    assert load_head(tmp_path / "p.safetensors").expansion is None


@pytest.mark.parametrize("precision,tol", [("exact", 1e-10), ("fast", 1e-5)])
def test_accumulator_folds_into_the_stats_of_the_same_batches(precision, tol):
    x, y = make_data(4, 1000, 12, [0, 2, 5, 7])
    acc = Accumulator(12, expand=RandomFeatures(12, 48, seed=3), precision=precision, fold_every=3)
    for k in range(0, 1000, 96):
        acc.update(torch.from_numpy(x[k : k + 96]), torch.from_numpy(y[k : k + 96]))
    got = acc.stats()
    want = headstart.Stats(12, expand=headstart.RandomFeatures(12, 48, seed=3))
    want.update(x, y)
    assert got.n == 1000 and got.classes == want.classes and got.expansion == want.expansion
    p, q = got._parts()["task"], want._parts()["task"]
    assert rel_err(p["gram_lower"], q["gram_lower"]) < tol
    assert rel_err(p["sum"], q["sum"]) < tol
    assert rel_err(p["class_sums"], q["class_sums"]) < tol
    assert list(p["class_counts"]) == list(q["class_counts"])


def test_accumulator_without_expansion_and_into_existing_stats():
    x, y = make_data(8, 500, 6, [4, 9])
    base = headstart.Stats(6)
    base.update(x[:100], y[:100])
    acc = Accumulator(6, precision="exact", stats=base)
    acc.update(torch.from_numpy(x[100:]), y[100:])
    assert acc.stats() is base and base.n == 500
    want = headstart.Stats(6)
    want.update(x, y)
    assert rel_err(base._parts()["task"]["gram_lower"], want._parts()["task"]["gram_lower"]) < 1e-12


def test_accumulator_refuses_bad_batches_without_change():
    acc = Accumulator(4, precision="exact")
    acc.update(torch.ones(3, 4), [1, 2, 3])
    with pytest.raises(ValueError, match="row 1, column 2"):
        bad = torch.ones(2, 4)
        bad[1, 2] = float("inf")
        acc.update(bad, [0, 0])
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        acc.update(torch.ones(2, 5), [0, 0])
    with pytest.raises(ValueError, match="labels"):
        acc.update(torch.ones(2, 4), [0.5, 1.0])
    with pytest.raises(ValueError, match="does not match"):
        Accumulator(4, stats=headstart.Stats(5))
    assert acc.stats().n == 3


@cuda
def test_cuda_matrix_and_accumulator_match_the_cpu():
    rf = RandomFeatures(32, 1024, seed=1)
    r_gpu = rf.matrix("cuda").cpu()
    assert rel_err(r_gpu.numpy(), rf.matrix().numpy()) <= 2**-23
    x, y = make_data(5, 2000, 32, [0, 1, 2])
    acc = Accumulator(32, device="cuda", expand=rf)
    acc.update(torch.from_numpy(x).float().cuda(), torch.from_numpy(y).cuda())
    want = headstart.Stats(32, precision="fast", expand=rf.native())
    want.update(x.astype(np.float32), y)
    assert rel_err(acc.stats()._parts()["task"]["gram_lower"], want._parts()["task"]["gram_lower"]) < 1e-5
