"""`headstart fit` on Parquet written by pyarrow gives the head of the same rows in .npy, and
refuses a file with a null row (naming it) without writing a head."""

import subprocess

import numpy as np
import pytest
from conftest import make_data, nc_reference, rel_err

from headstart._safetensors import read_safetensors

pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed (pip install pyarrow)")
pq = pytest.importorskip("pyarrow.parquet")

CLASSES = [0, 3, 4, 8]
LAM = 0.05


def fit(binary, out, *args):
    return subprocess.run([binary, "fit", *args, "--lambda", str(LAM), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)


def head(path):
    tensors, _ = read_safetensors(path.read_bytes())
    return tensors["weight"].astype(np.float64), tensors["bias"].astype(np.float64)


@pytest.fixture
def rows():
    x, y = make_data(11, 5000, 24, CLASSES)
    return x, y


def table(x, y, layout, dtype):
    values = pa.array(x.astype(dtype).ravel())
    if layout == "fixed":
        features = pa.FixedSizeListArray.from_arrays(values, x.shape[1])
    else:
        offsets = pa.array(np.arange(0, x.size + 1, x.shape[1], dtype=np.int32))
        features = pa.ListArray.from_arrays(offsets, values)
    return pa.table({"emb": features, "label": pa.array(y.astype(np.int32))})


@pytest.mark.parametrize("layout,dtype", [("fixed", np.float32), ("list", np.float32), ("fixed", np.float64),
                                          ("list", np.float64)])
def test_pyarrow_parquet_gives_the_npy_head(tmp_path, headstart_bin, rows, layout, dtype):
    x, y = rows
    np.save(tmp_path / "x.npy", x.astype(dtype))
    np.save(tmp_path / "y.npy", y)
    # Several row groups, pyarrow's default compression (snappy).
    pq.write_table(table(x, y, layout, dtype), tmp_path / "d.parquet", row_group_size=700)
    assert pq.ParquetFile(tmp_path / "d.parquet").num_row_groups == 8

    done = fit(headstart_bin, tmp_path / "npy.safetensors", "--features", str(tmp_path / "x.npy"),
               "--labels", str(tmp_path / "y.npy"))
    assert done.returncode == 0, done.stderr
    done = fit(headstart_bin, tmp_path / "pq.safetensors", "--features", str(tmp_path / "d.parquet"),
               "--feature-column", "emb", "--label-column", "label")
    assert done.returncode == 0, done.stderr

    w_npy, b_npy = head(tmp_path / "npy.safetensors")
    w_pq, b_pq = head(tmp_path / "pq.safetensors")
    # Same rows, same arithmetic up to the order of the f64 sums; heads are stored as float32.
    assert rel_err(w_pq, w_npy) < 1e-6 and rel_err(b_pq, b_npy) < 1e-6
    # And both are the float64 solve from the raw rows (features as stored), to float32 storage.
    w_ref, b_ref = nc_reference(x.astype(dtype), y, CLASSES, LAM)
    assert rel_err(w_pq, w_ref) < 1e-5 and rel_err(b_pq, b_ref) < 1e-5


def test_a_null_row_is_named_and_no_head_is_written(tmp_path, headstart_bin, rows):
    x, y = rows
    t = table(x, y, "list", np.float32)
    emb = t.column("emb").to_pylist()
    emb[1234] = None
    bad = pa.table({"emb": pa.array(emb, type=pa.list_(pa.float32())), "label": t.column("label")})
    pq.write_table(bad, tmp_path / "bad.parquet", row_group_size=700)
    done = fit(headstart_bin, tmp_path / "h.safetensors", "--features", str(tmp_path / "bad.parquet"),
               "--feature-column", "emb", "--label-column", "label")
    assert done.returncode != 0
    assert "1234" in done.stderr and "emb" in done.stderr, done.stderr
    assert not (tmp_path / "h.safetensors").exists()
