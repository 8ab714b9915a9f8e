import numpy as np
import pytest


def make_data(seed, n, d, classes):
    """Seeded labelled features: class centres plus uniform noise."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-2, 2, size=(len(classes), d))
    which = rng.integers(0, len(classes), size=n)
    x = centres[which] + rng.uniform(-1, 1, size=(n, d))
    y = np.asarray(classes, dtype=np.int64)[which]
    return x, y


def nc_reference(x, y, classes, lam, bias=True):
    """The nc head from the raw rows in float64: W = (1/C) M^T (G/N + lam I)^-1, b = 1/C - W mu."""
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    c = len(classes)
    means = np.stack([x[y == k].mean(axis=0) for k in classes])
    a = x.T @ x / n + lam * np.eye(d)
    w = np.linalg.solve(a, means.T).T / c
    b = 1.0 / c - w @ x.mean(axis=0) if bias else np.zeros(c)
    return w, b


def rel_err(actual, expected):
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    scale = np.abs(expected).max()
    return np.abs(actual - expected).max() / (scale if scale > 0 else 1.0)


@pytest.fixture
def data():
    return make_data(3, 600, 7, [-2, 0, 5, 9])


@pytest.fixture(scope="session")
def headstart_bin():
    """The `headstart` program (HEADSTART_BIN), for tests against the CLI or a live server."""
    import os

    binary = os.environ.get("HEADSTART_BIN")
    if not binary:
        pytest.skip("set HEADSTART_BIN to the headstart binary to run tests against the CLI or a live server")
    if not os.access(binary, os.X_OK):
        pytest.fail(f"HEADSTART_BIN={binary!r} is not an executable")
    return binary
