"""Arrow input of headstart.Stats: the same statistics as through numpy, read in place, and
refusals (nulls, lengths, NaN) that name the row and change nothing."""

import numpy as np
import pytest
from conftest import make_data, rel_err

import headstart

pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed (pip install pyarrow)")

D = 6


@pytest.fixture
def rows():
    return make_data(11, 300, D, [-3, 0, 4, 250])


def fixed(x):
    """A FixedSizeListArray of the rows of x (its buffer is x's, no copy)."""
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])


def listed(x, large=False):
    """A ListArray (LargeListArray) of the rows of x, every list of length d."""
    offsets = np.arange(0, x.size + 1, x.shape[1], dtype=np.int64 if large else np.int32)
    kind = pa.LargeListArray if large else pa.ListArray
    return kind.from_arrays(pa.array(offsets), pa.array(x.reshape(-1)))


def by_numpy(x, y):
    s = headstart.Stats(x.shape[1])
    s.update(x, y)
    return s


def assert_same(arrow_stats, x, y):
    ref = by_numpy(x, y)
    assert arrow_stats.n == ref.n == len(y)
    assert arrow_stats.classes == ref.classes
    # One batch in the same row order: the same additions, so the same bits.
    assert arrow_stats.to_bytes() == ref.to_bytes()
    head, want = arrow_stats.solve(), ref.solve()
    assert rel_err(head.weight, want.weight) < 1e-12 and rel_err(head.bias, want.bias) < 1e-12


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fixed_size_list(rows, dtype):
    x, y = rows
    x = x.astype(dtype)
    s = headstart.Stats(D)
    s.update(fixed(x), y)
    assert_same(s, x, y)


@pytest.mark.parametrize("large", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_list_and_large_list(rows, large, dtype):
    x, y = rows
    x = x.astype(dtype)
    s = headstart.Stats(D)
    s.update(listed(x, large), pa.array(y))
    assert_same(s, x, y)


def test_chunked_array_with_several_chunks_and_unaligned_label_chunks(rows):
    x, y = rows
    x = x.astype(np.float32)
    features = pa.chunked_array([fixed(x[:100]), fixed(x[100:101]), fixed(x[101:101]), fixed(x[101:])])
    labels = pa.chunked_array([pa.array(y[:7]), pa.array(y[7:250]), pa.array(y[250:])])
    assert features.num_chunks == 4 and len(features) == len(y)
    s = headstart.Stats(D)
    s.update(features, labels)
    assert_same(s, x, y)


def test_list_chunks_mixed_with_fixed_size_chunks_are_one_batch(rows):
    x, y = rows
    s = headstart.Stats(D)
    s.update(pa.chunked_array([listed(x[:150])]), y[:150])
    s.update(pa.chunked_array([fixed(x[150:])]), y[150:])
    ref = headstart.Stats(D)
    ref.update(x[:150], y[:150])
    ref.update(x[150:], y[150:])
    assert s.to_bytes() == ref.to_bytes()


@pytest.mark.parametrize("make", [fixed, listed, lambda x: listed(x, large=True)])
def test_a_sliced_array_respects_its_offset(rows, make):
    x, y = rows
    whole = make(np.concatenate([np.full((5, D), 7.0), x, np.full((3, D), -7.0)]))
    part = whole.slice(5, len(y))
    assert part.offset == 5
    s = headstart.Stats(D)
    s.update(part, pa.array(np.concatenate([np.zeros(5, np.int64), y])).slice(5))
    assert_same(s, x, y)


@pytest.mark.parametrize("label_type", [pa.int32(), pa.uint8(), pa.int64(), pa.int16(), pa.uint64()])
def test_a_table_and_its_column_names(rows, label_type):
    x, y = rows
    y = np.where(y < 0, 3, y)  # non-negative, for the unsigned types
    table = pa.table({"id": np.arange(len(y)), "emb": fixed(x), "label": pa.array(y).cast(label_type)})
    s = headstart.Stats(D)
    s.update_table(table, "emb", "label")
    assert_same(s, x, y)
    batch = headstart.Stats(D)
    batch.update_table(table.to_batches()[0], feature_column="emb", label_column="label")
    assert batch == s


def test_a_table_of_several_chunks(rows):
    x, y = rows
    tables = [pa.table({"f": listed(x[i : i + 70]), "y": pa.array(y[i : i + 70], pa.int32())}) for i in range(0, len(y), 70)]
    table = pa.concat_tables(tables)
    assert table.column("f").num_chunks == 5
    s = headstart.Stats(D)
    s.update_table(table, "f", "y")
    assert_same(s, x, y)


def test_numpy_labels_with_arrow_features_and_arrow_labels_with_numpy_features(rows):
    x, y = rows
    a, b = headstart.Stats(D), headstart.Stats(D)
    a.update(fixed(x), y.astype(np.int32))
    b.update(x, pa.array(y, pa.int32()))
    assert a == b == by_numpy(x, y)


def test_an_empty_array_adds_nothing():
    s = headstart.Stats(D)
    s.update(fixed(np.zeros((0, D))), pa.array([], pa.int64()))
    s.update(pa.chunked_array([], pa.list_(pa.float32(), D)), pa.chunked_array([], pa.int8()))
    assert s.n == 0 and s == headstart.Stats(D)


def test_retract_takes_the_same_arrow_input(rows):
    x, y = rows
    s = by_numpy(x, y)
    s.retract(fixed(x[:100]), pa.array(y[:100]))
    assert s.n == len(y) - 100


# Refusals: a ValueError naming the row, and nothing applied.


@pytest.fixture
def before(rows):
    x, y = rows
    s = by_numpy(x[:50], y[:50])
    return s, s.copy()


def refused(stats, features, labels, match):
    state, copy = stats
    with pytest.raises(ValueError, match=match):
        state.update(features, labels)
    assert state == copy and state.n == copy.n


def with_null_row(x, row, kind):
    items = [list(r) for r in x]
    items[row] = None
    return pa.array(items, kind)


@pytest.mark.parametrize("kind", [pa.list_(pa.float64(), D), pa.list_(pa.float64()), pa.large_list(pa.float64())])
def test_a_null_list_names_its_row(rows, before, kind):
    x, y = rows
    refused(before, with_null_row(x, 37, kind), y, r"features row 37 is null")


def test_a_null_list_in_a_later_chunk_names_its_row_in_the_whole_column(rows, before):
    x, y = rows
    features = pa.chunked_array([fixed(x[:100]), with_null_row(x[100:], 5, pa.list_(pa.float64(), D))])
    refused(before, features, y, r"features row 105 is null")


@pytest.mark.parametrize("kind", [pa.list_(pa.float32(), D), pa.list_(pa.float32())])
def test_a_null_element_names_its_row_and_column(rows, before, kind):
    x, y = rows
    items = [list(map(float, r)) for r in x]
    items[123][4] = None
    refused(before, pa.array(items, kind), y, r"features row 123, column 4 is null")


def test_a_list_of_the_wrong_length_names_its_row(rows, before):
    x, y = rows
    items = [list(r) for r in x]
    items[201] = items[201][:-1]
    refused(before, pa.array(items, pa.list_(pa.float64())), y, r"features row 201 has 5 values, expected 6")
    refused(before, fixed(x[:, :-1]), y, r"has 5 values .* dimension is 6")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_names_its_row_in_the_whole_column(rows, before, bad):
    x, y = rows
    x = x.copy()
    x[160, 2] = bad
    features = pa.chunked_array([fixed(x[:150]), fixed(x[150:])])  # the first chunk is fine
    refused(before, features, y, r"row 160, column 2: .* not finite")


def test_null_or_float_labels_and_wrong_types_are_refused(rows, before):
    x, y = rows
    labels = pa.array([None if i == 77 else int(v) for i, v in enumerate(y)], pa.int64())
    refused(before, fixed(x), labels, r"labels row 77 is null")
    refused(before, fixed(x), pa.array(y.astype(np.float64)), r"labels must be integers")
    refused(before, fixed(x.astype(np.float16)), y, r"float32 or float64")
    refused(before, pa.array([1.0] * len(y)), y, r"list array")
    refused(before, fixed(x), y[:-1], r"300 feature rows but 299 labels")
    refused(before, pa.table({"f": fixed(x), "y": y}), y, r"update_table")
    state, copy = before
    with pytest.raises(ValueError, match=r"no column 'emb'"):
        state.update_table(pa.table({"f": fixed(x), "y": y}), "emb", "y")
    assert state == copy


# Zero copy: the rows are read where Arrow keeps them.


def test_the_native_update_reads_numpy_views_of_the_arrow_buffers(rows):
    from headstart import _arrow

    x, y = rows
    x = np.ascontiguousarray(x.astype(np.float32))
    for array in (fixed(x).slice(3, 200), listed(x).slice(3, 200), listed(x, large=True).slice(3, 200)):
        (view,) = _arrow.feature_chunks(array, D)
        assert view.shape == (200, D) and view.dtype == np.float32
        assert np.shares_memory(view, x)  # pa.array(x.reshape(-1)) wraps x's memory
        data = array.values.buffers()[1]
        assert view.ctypes.data == data.address + (array.values.offset + 3 * D) * 4
        np.testing.assert_array_equal(view, x[3:203])
    labels = pa.array(y)
    assert np.shares_memory(_arrow.labels_array(labels), np.frombuffer(labels.buffers()[1], np.int64))


class Exported:
    """Another library's array: only the Arrow PyCapsule interface."""

    def __init__(self, array):
        self.array = array

    def __arrow_c_array__(self, requested_schema=None):
        return self.array.__arrow_c_array__(requested_schema)


class Streamed:
    """Another library's chunked array: only the Arrow stream interface."""

    def __init__(self, array):
        self.array = array

    def __arrow_c_stream__(self, requested_schema=None):
        return self.array.__arrow_c_stream__(requested_schema)


def test_objects_exporting_the_arrow_c_interface(rows):
    x, y = rows
    s = headstart.Stats(D)
    s.update(Exported(fixed(x[:100])), Exported(pa.array(y[:100])))
    s.update(Streamed(pa.chunked_array([fixed(x[100:200]), fixed(x[200:])])), y[100:])
    ref = by_numpy(x[:100], y[:100])
    ref.update(x[100:], y[100:])
    assert s.to_bytes() == ref.to_bytes()


def test_a_pyarrow_tensor_and_a_pandas_frame_still_go_through_numpy(rows):
    x, y = rows
    s = headstart.Stats(D)
    s.update(pa.Tensor.from_numpy(np.ascontiguousarray(x)), y)
    pd = pytest.importorskip("pandas")
    s.update(pd.DataFrame(x), pd.Series(y))
    ref = by_numpy(x, y)
    ref.update(x, y)
    assert s.to_bytes() == ref.to_bytes()


def test_a_malformed_array_is_refused_before_it_is_read():
    # pyarrow's own constructors refuse buffers too short for their length; offsets that
    # run backwards pass them and would be read out of bounds. Arrow's full check runs on
    # every input: a pyarrow array, another library's array through the C data interface,
    # and a table's column.
    offsets = pa.py_buffer(np.array([0, 4, 2, 8], dtype=np.int32).tobytes())
    values = pa.array(np.zeros(8, dtype=np.float32))
    lists = pa.ListArray.from_buffers(pa.list_(pa.float32()), 3, [None, offsets], children=[values])

    class Foreign:
        def __arrow_c_array__(self, requested_schema=None):
            return lists.__arrow_c_array__(requested_schema)

    labels = np.zeros(3, dtype=np.int64)
    stats = headstart.Stats(2)
    for features in (lists, Foreign()):
        with pytest.raises(ValueError, match="features: malformed Arrow array: .*non-monotonic offset"):
            stats.update(features, labels)
    table = pa.table({"x": lists, "y": labels})
    with pytest.raises(ValueError, match="malformed Arrow array"):
        stats.update_table(table, "x", "y")
    assert stats.n == 0
