"""headstart.RandomFeatures and expanded Stats, against an independent numpy reference: Philox
in uint64 arithmetic, z = ReLU(x @ R) and its statistics from the raw design matrix."""

import pickle

import numpy as np
import pytest
from conftest import make_data, rel_err

import headstart

M0, M1, W0, W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85
MASK = np.uint64(0xFFFFFFFF)


def philox(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on uint64 arrays holding uint32 words (a * M < 2^64: exact in uint64)."""
    c = [np.asarray(v, dtype=np.uint64) for v in (c0, c1, c2, c3)]
    k0, k1 = np.uint64(k0), np.uint64(k1)
    for r in range(10):
        if r:
            k0, k1 = (k0 + np.uint64(W0)) & MASK, (k1 + np.uint64(W1)) & MASK
        p0, p1 = c[0] * np.uint64(M0), c[2] * np.uint64(M1)
        hi0, lo0, hi1, lo1 = p0 >> np.uint64(32), p0 & MASK, p1 >> np.uint64(32), p1 & MASK
        c = [hi1 ^ c[1] ^ k0, lo1, hi0 ^ c[3] ^ k1, lo0]
    return c


def reference_matrix(d, m, seed):
    """R from the documented definition: Irwin-Hall(4) of the Philox words, standardised."""
    i, j = np.meshgrid(np.arange(d, dtype=np.uint64), np.arange(m, dtype=np.uint64), indexing="ij")
    zero = np.zeros_like(i)
    w = philox(j, i, zero, zero, seed & 0xFFFFFFFF, seed >> 32)
    s = (w[0] + w[1] + w[2] + w[3]).astype(np.int64) - ((1 << 33) - 2)
    return (s.astype(np.float64) * (np.sqrt(3.0) / 2.0**32)).astype(np.float32)


def test_philox_known_answers():
    # Random123's kat_vectors for philox4x32_10.
    out = philox([0], [0], [0], [0], 0, 0)
    assert [int(v[0]) for v in out] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    out = philox([0x243F6A88], [0x85A308D3], [0x13198A2E], [0x03707344], 0xA4093822, 0x299F31D0)
    assert [int(v[0]) for v in out] == [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


@pytest.mark.parametrize("d,m,seed", [(3, 5, 0), (40, 300, 7), (7, 33, 2**64 - 1)])
def test_matrix_is_the_documented_one_bit_for_bit(d, m, seed):
    rf = headstart.RandomFeatures(d, m, seed=seed)
    r = rf.matrix()
    assert r.shape == (d, m) and r.dtype == np.float32
    assert np.array_equal(r.view(np.uint32), reference_matrix(d, m, seed).view(np.uint32))


def test_transform_matches_numpy_in_both_precisions():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(700, 12))
    rf = headstart.RandomFeatures(12, 90, seed=4)
    r = reference_matrix(12, 90, 4).astype(np.float64)
    want = np.maximum(x @ r, 0.0)
    z64 = rf.transform(x)
    assert z64.dtype == np.float64 and z64.shape == (700, 90)
    assert rel_err(z64, want) < 1e-13
    z32 = rf.transform(x.astype(np.float32))
    assert z32.dtype == np.float32
    want32 = np.maximum(x.astype(np.float32).astype(np.float64) @ r, 0.0)
    assert rel_err(z32, want32) < 1e-5  # f32 products over 12 terms
    with pytest.raises(ValueError, match="columns"):
        rf.transform(x[:, :5])
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="row 3"):
        rf.transform(bad)


def test_expanded_statistics_match_the_design_matrix():
    x, y = make_data(5, 1300, 9, [2, 4, 6])
    rf = headstart.RandomFeatures(9, 50, seed=11)
    s = headstart.Stats(9, expand=rf)
    s.update(x, y)
    assert (s.dim, s.input_dim, s.n) == (50, 9, 1300)
    assert s.expansion == rf
    z = np.maximum(x @ reference_matrix(9, 50, 11).astype(np.float64), 0.0)
    parts = s._parts()["task"]
    gram = z.T @ z
    assert rel_err(parts["gram_lower"], gram[np.triu_indices(50)]) < 1e-10
    assert rel_err(parts["sum"], z.sum(0)) < 1e-10
    for k, c in enumerate(parts["class_ids"]):
        assert rel_err(parts["class_sums"][k], z[y == c].sum(0)) < 1e-10
    # The head: a ridge solve of the expanded design matrix.
    head = s.solve(form="nc", lam=0.01)
    assert head.dim == 50 and head.expansion == rf
    means = np.stack([z[y == c].mean(0) for c in (2, 4, 6)])
    w = np.linalg.solve(gram / len(z) + 0.01 * np.eye(50), means.T).T / 3
    assert rel_err(head.weight, w) < 1e-8


def test_fast_precision_is_within_f32_rounding():
    x, y = make_data(6, 900, 8, [0, 1])
    rf = headstart.RandomFeatures(8, 40, seed=2)
    fast = headstart.Stats(8, precision="fast", expand=rf)
    fast.update(x.astype(np.float32), y)
    z = np.maximum(x.astype(np.float32).astype(np.float64) @ reference_matrix(8, 40, 2).astype(np.float64), 0)
    got = fast._parts()["task"]["gram_lower"]
    err = rel_err(got, (z.T @ z)[np.triu_indices(40)])
    assert 1e-12 < err < 1e-5


def test_specs_are_checked_everywhere(tmp_path):
    rf = headstart.RandomFeatures(4, 16, seed=1)
    with pytest.raises(ValueError, match="expands 4-dimensional"):
        headstart.Stats(5, expand=rf)
    with pytest.raises(ValueError, match="feature count 0"):
        headstart.RandomFeatures(4, 0)
    a = headstart.Stats(4, expand=rf)
    x, y = make_data(1, 80, 4, [0, 1])
    a.update(x, y)
    with pytest.raises(ValueError, match="expands 4-dimensional"):
        a.update(np.zeros((2, 16)), [0, 1])
    with pytest.raises(ValueError, match="different expansions"):
        a.merge(headstart.Stats(4, expand=headstart.RandomFeatures(4, 16, seed=2)))
    with pytest.raises(ValueError, match="different expansions"):
        a.merge(headstart.Stats(16))
    # State files, bytes, pickles and parts keep the spec.
    a.save(tmp_path / "a.hs")
    for back in (
        headstart.Stats.load(tmp_path / "a.hs"),
        pickle.loads(pickle.dumps(a)),
        headstart.Stats._from_parts(a._parts()),
    ):
        assert back == a and back.expansion == rf
    assert pickle.loads(pickle.dumps(rf)) == rf
    # Head files carry it; lam="auto" expands held-out raw features the same way.
    head = a.solve(lam="auto", val=(x, y))
    head.save(tmp_path / "h.safetensors")
    from headstart._safetensors import read_safetensors

    _, meta = read_safetensors((tmp_path / "h.safetensors").read_bytes())
    assert '"seed":1' in meta["expansion"] and '"features":16' in meta["expansion"]
    plain = headstart.Stats(16)
    plain.update(rf.transform(x), y)
    with pytest.raises(ValueError, match="held-out statistics"):
        a.solve(lam="auto", val=plain)
