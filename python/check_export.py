"""Checks `headstart fit` against an independent numpy float64 solve.

Writes seeded features and labels with numpy, runs the CLI, reads the head with the
`safetensors` package, and compares it with the paper's formula (nc) and ridge regression
solved by numpy from the raw design matrix. Exits non-zero on any mismatch.

Usage: python python/check_export.py PATH/TO/headstart
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, safe_open

# Heads are stored in float32: compare at float32 precision, relative to the largest entry.
REL_TOL = 1e-5


def nc_reference(x, y, classes, lam, bias=True):
    n, d = x.shape
    c = len(classes)
    means = np.stack([x[y == k].mean(axis=0) for k in classes])  # C × d
    a = x.T @ x / n + lam * np.eye(d)
    w = np.linalg.solve(a, means.T).T / c
    b = (1.0 / c - w @ x.mean(axis=0)) if bias else np.zeros(c)
    return w, b


def ridge_reference(x, y, classes, lam):
    """Least squares with an explicit, unpenalised bias column."""
    n, d = x.shape
    targets = (y[:, None] == np.asarray(classes)[None, :]).astype(np.float64)
    xa = np.hstack([x, np.ones((n, 1))])
    penalty = np.diag(np.r_[np.full(d, lam * n), 0.0])
    coef = np.linalg.solve(xa.T @ xa + penalty, xa.T @ targets)
    return coef[:d].T, coef[d]


def rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def main():
    binary = sys.argv[1]
    rng = np.random.default_rng(1234)
    n, d = 3000, 48
    class_ids = np.array([-3, 0, 5, 11, 1000])
    centres = rng.normal(size=(len(class_ids), d)) * 2
    y = rng.choice(class_ids, size=n)
    x = centres[np.searchsorted(np.sort(class_ids), y)] + rng.normal(size=(n, d))
    x32 = x.astype(np.float32)
    x64 = x32.astype(np.float64)  # what headstart sees, exactly
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "x.npy", x32)
        np.save(tmp / "y.npy", y.astype(np.int32))
        cases = [
            # The default λ is relative: 0.001 × the mean eigenvalue of G/N, tr(XᵀX/N)/d.
            ("nc", [], nc_reference(x64, y, sorted(class_ids), 0.001 * (x64**2).sum() / n / d), sorted(class_ids), ""),
            ("nc-rel", ["--lambda", "rel:0.3"],
             nc_reference(x64, y, sorted(class_ids), 0.3 * (x64**2).sum() / n / d), sorted(class_ids), ""),
            ("nc-absolute", ["--lambda", "0.05"], nc_reference(x64, y, sorted(class_ids), 0.05), sorted(class_ids), ""),
            ("nc-subset", ["--classes", "1000,-3", "--lambda", "0.5"],
             nc_reference(x64, y, [1000, -3], 0.5), [1000, -3], "fc."),
            ("nc-no-bias", ["--no-bias", "--lambda", "0.01"],
             nc_reference(x64, y, sorted(class_ids), 0.01, bias=False), sorted(class_ids), ""),
            ("ridge", ["--form", "ridge", "--lambda", "0.1"],
             ridge_reference(x64, y, sorted(class_ids), 0.1), sorted(class_ids), "head."),
        ]
        for name, extra, (w_ref, b_ref), classes, prefix in cases:
            out = tmp / f"{name}.safetensors"
            cmd = [binary, "fit", "--features", str(tmp / "x.npy"), "--labels", str(tmp / "y.npy"),
                   "--out", str(out), "--batch", "257", "--producers", "3", "--prefix", prefix] + extra
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            tensors = load_file(str(out))
            w, b, ids = tensors[f"{prefix}weight"], tensors[f"{prefix}bias"], tensors[f"{prefix}class_ids"]
            assert w.dtype == np.float32 and b.dtype == np.float32 and ids.dtype == np.int64, name
            assert w.shape == (len(classes), d) and b.shape == (len(classes),), name
            assert ids.tolist() == list(classes), (name, ids)
            with safe_open(str(out), framework="numpy") as f:
                meta = f.metadata()
            assert meta["format"] == "pt" and int(meta["samples"]) == n and int(meta["dim"]) == d, meta
            assert json.loads(meta["classes"]) == list(classes), meta
            err = max(rel_err(w.astype(np.float64), w_ref), rel_err(b.astype(np.float64), b_ref) if b_ref.any() else 0.0)
            if not b_ref.any():
                assert not b.any(), f"{name}: bias should be zero"
            print(f"{name:12s} relative error vs numpy float64: {err:.2e}")
            assert err < REL_TOL, f"{name}: relative error {err} exceeds {REL_TOL}"
            worst = max(worst, err)
    print(f"python check passed: {len(cases)} heads, largest relative error {worst:.2e} (tolerance {REL_TOL})")


if __name__ == "__main__":
    main()
