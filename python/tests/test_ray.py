"""headstart.ray.accumulate on a local two-CPU Ray cluster: the statistics of a Parquet
dataset, accumulated block by block in Ray's workers and merged in a tree on the driver, equal
one process's to 1e-12 relative."""

import numpy as np
import pytest
from conftest import rel_err

import headstart

pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed (pip install pyarrow)")
pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is built without Parquet")
ray = pytest.importorskip("ray", reason='ray is not installed (pip install "ray[data]")')
pytest.importorskip("ray.data", reason='Ray Data is not installed (pip install "ray[data]")')

import headstart.ray  # noqa: E402

D, FILES, ROWS_PER_FILE, ROW_GROUP = 32, 4, 5000, 1250
CLASSES = [0, 3, 7, 12, 40]


@pytest.fixture(scope="module")
def cluster():
    """One local cluster for the module (starting Ray takes several seconds)."""
    if ray.is_initialized():
        pytest.skip("a Ray cluster is already initialised in this process")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    # Blocks of at most 256 KiB (Ray's default is 128 MiB): the 2.5 MB of features below then
    # arrive in about ten blocks, so that the driver merges about ten partial states.
    context.target_max_block_size = 256 * 1024
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def parquet_dir(tmp_path_factory):
    """FILES Parquet files of ROWS_PER_FILE rows (row groups of ROW_GROUP): "emb", D float32
    values per row (fixed-size list), "label" int32; with the same rows as numpy arrays."""
    root = tmp_path_factory.mktemp("features")
    rng = np.random.default_rng(5)
    centres = rng.normal(0, 2, size=(len(CLASSES), D))
    xs, ys = [], []
    for f in range(FILES):
        which = rng.integers(0, len(CLASSES), size=ROWS_PER_FILE)
        x = (centres[which] + rng.normal(0, 1, size=(ROWS_PER_FILE, D))).astype(np.float32)
        y = np.asarray(CLASSES, dtype=np.int32)[which]
        emb = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), D)
        pq.write_table(pa.table({"emb": emb, "label": y}), root / f"part-{f}.parquet", row_group_size=ROW_GROUP)
        xs.append(x)
        ys.append(y)
    return root, np.concatenate(xs), np.concatenate(ys)


def one_process(x, y, batch=4096):
    s = headstart.Stats(D)
    for i in range(0, len(y), batch):
        s.update(x[i : i + batch], y[i : i + batch])
    return s


def test_accumulate_equals_one_process(cluster, parquet_dir):
    root, x, y = parquet_dir
    dataset = ray.data.read_parquet(str(root))
    timings = {}
    stats = headstart.ray.accumulate(dataset, "emb", "label", D, fan_in=2, timings=timings)
    ref = one_process(x, y)

    assert stats.n == ref.n == FILES * ROWS_PER_FILE
    assert stats.classes == ref.classes == CLASSES
    got, want = stats._parts()["task"], ref._parts()["task"]
    assert list(got["class_ids"]) == CLASSES
    np.testing.assert_array_equal(got["class_counts"], want["class_counts"])
    for key in ("gram_lower", "sum", "class_sums"):
        assert rel_err(got[key], want[key]) < 1e-12, key
    head, expected = stats.solve(), ref.solve()
    assert list(head.class_ids) == CLASSES
    assert rel_err(head.weight, expected.weight) < 1e-12
    assert rel_err(head.bias, expected.bias) < 1e-12

    # Several blocks, merged on the driver in a tree; the timings are reported.
    assert timings["partials"] >= 4 and timings["rows"] == stats.n
    assert timings["accumulate_s"] > 0 and 0 <= timings["merge_s"] < timings["total_s"]
    assert stats.precision == "exact"


def test_a_bad_row_fails_the_call_naming_the_row(cluster, tmp_path):
    x = np.ones((10, D), dtype=np.float32)
    x[6, 3] = np.nan
    emb = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), D)
    pq.write_table(pa.table({"emb": emb, "label": np.arange(10)}), tmp_path / "bad.parquet")
    dataset = ray.data.read_parquet(str(tmp_path))
    with pytest.raises(ValueError, match=r"row 6, column 3: feature value NaN is not finite \(the row within a block of 10 rows\)"):
        headstart.ray.accumulate(dataset, "emb", "label", D, precision="fast")


def test_arguments_are_checked_before_any_task(cluster):
    dataset = ray.data.range(4)
    with pytest.raises(ValueError, match="fan_in"):
        headstart.ray.accumulate(dataset, "emb", "label", D, fan_in=1)
    with pytest.raises(ValueError, match="precision|unknown"):
        headstart.ray.accumulate(dataset, "emb", "label", D, precision="half")
