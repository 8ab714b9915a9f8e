"""Arrow input for `headstart.Stats` (used by its `update`, `retract` and `update_table`).

pyarrow is imported here only, and only when an Arrow object is given: `import headstart` does
not need it. Feature rows are read in place: each Arrow chunk becomes a numpy *view* of its
float buffer (`to_numpy(zero_copy_only=True)` on the slice of the child values that the chunk's
rows cover, so a sliced array's offset is respected). The native `update` then copies those
views once, with the GIL released, into one buffer that it checks (NaN/inf) and adds, so a
batch of several chunks is applied whole or not at all, as a numpy batch is.

Every refusal is a `ValueError` naming the first bad row, 0-based over the whole array or
column (across its chunks), before anything is read into the state.
"""

import numpy as np

_FLOATS = {"float": np.float32, "double": np.float64}


def _pa():
    import pyarrow

    return pyarrow


def is_arrow(obj):
    """Whether `obj` exports the Arrow PyCapsule interface and is a pyarrow object or no
    numpy-style array (a pandas object or a `pyarrow.Tensor` goes through numpy, as before).
    The same test as the native `is_arrow`."""
    if isinstance(obj, np.ndarray) or not (hasattr(obj, "__arrow_c_array__") or hasattr(obj, "__arrow_c_stream__")):
        return False
    return type(obj).__module__.split(".")[0] == "pyarrow" or not hasattr(obj, "__array__")


def _arrow_column(obj, what):
    """A pyarrow Array or ChunkedArray for `obj` (zero-copy through the C data interface for
    another library's object)."""
    pa = _pa()
    if isinstance(obj, (pa.Array, pa.ChunkedArray)):
        return _validated(obj, what)
    if isinstance(obj, (pa.Table, pa.RecordBatch)):
        raise ValueError(
            f"{what}: got a {type(obj).__name__}; pass it to update_table(table, feature_column, "
            "label_column), or pass its columns"
        )
    if hasattr(obj, "__arrow_c_array__"):
        return _validated(pa.array(obj), what)
    if hasattr(obj, "__arrow_c_stream__"):
        return _validated(pa.chunked_array(obj), what)
    raise ValueError(f"{what}: expected a pyarrow Array or ChunkedArray, got {type(obj).__name__}")


def _validated(column, what):
    """`column`, after Arrow's full check: buffers too short for the length they claim, or
    offsets outside the values, would otherwise be read out of bounds."""
    pa = _pa()
    try:
        column.validate(full=True)
    except (pa.ArrowInvalid, pa.ArrowException) as e:
        raise ValueError(f"{what}: malformed Arrow array: {e}") from None
    return column


def _chunks(column):
    pa = _pa()
    return column.chunks if isinstance(column, pa.ChunkedArray) else [column]


def _first(mask_array):
    """Index of the first true value of a pyarrow boolean array (error paths only)."""
    return int(np.flatnonzero(mask_array.to_numpy(zero_copy_only=False))[0])


def _check_float(value_type, column_type):
    name = str(value_type)
    if name not in _FLOATS:
        raise ValueError(
            f"features must be lists of float32 or float64 (as the CLI's .npy reader), got "
            f"{column_type}; convert them first, e.g. array.cast(pa.list_(pa.float32(), dim))"
        )
    return _FLOATS[name]


def _values_view(values, start, rows, dim, base):
    """The numpy view of `rows` × `dim` values of `values` from `start`, refusing nulls."""
    flat = values.slice(start, rows * dim)
    if flat.null_count:
        i = _first(flat.is_null())
        raise ValueError(f"features row {base + i // dim}, column {i % dim} is null")
    return flat.to_numpy(zero_copy_only=True).reshape(rows, dim)


def feature_chunk(chunk, dim, base=0):
    """A (len(chunk), dim) numpy view of one Arrow list array's rows (`base`: the index of its
    first row in the whole column, for error messages)."""
    pa = _pa()
    if isinstance(chunk, pa.ExtensionArray):
        # Tensor columns (arrow.fixed_shape_tensor, Ray Data's tensors) store their rows as lists.
        permutation = getattr(chunk.type, "permutation", None)
        if permutation is not None and list(permutation) != sorted(permutation):
            raise ValueError(f"features: a tensor type with permutation {permutation} is not row-major")
        chunk = chunk.storage
    kind = chunk.type
    rows = len(chunk)
    if pa.types.is_fixed_size_list(kind):
        dtype = _check_float(kind.value_type, kind)
        if kind.list_size != dim:
            raise ValueError(
                f"features row {base} has {kind.list_size} values (a {kind}, every row), but the "
                f"state's dimension is {dim}"
            )
        if chunk.null_count:
            raise ValueError(f"features row {base + _first(chunk.is_null())} is null")
        if rows == 0:
            return np.empty((0, dim), dtype=dtype)
        return _values_view(chunk.values, chunk.offset * dim, rows, dim, base)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        dtype = _check_float(kind.value_type, kind)
        if chunk.null_count:
            raise ValueError(f"features row {base + _first(chunk.is_null())} is null")
        if rows == 0:
            return np.empty((0, dim), dtype=dtype)
        # rows + 1 offsets into `values`, already shifted by the array's own offset.
        offsets = chunk.offsets.to_numpy(zero_copy_only=True)
        lengths = np.diff(offsets)
        wrong = np.flatnonzero(lengths != dim)
        if wrong.size:
            i = int(wrong[0])
            raise ValueError(f"features row {base + i} has {int(lengths[i])} values, expected {dim}")
        # Every list holds dim values, so the rows are one contiguous run of the values.
        return _values_view(chunk.values, int(offsets[0]), rows, dim, base)
    raise ValueError(
        f"features must be a (fixed-size) list array of float32/float64 rows, got Arrow type {kind}"
    )


def feature_chunks(features, dim):
    """Numpy views of the rows of an Arrow Array or ChunkedArray, one per chunk."""
    column = _arrow_column(features, "features")
    chunks = _chunks(column)
    if not chunks:  # a ChunkedArray without chunks: one empty array of its type
        chunks = [column.combine_chunks()]
    views, base = [], 0
    for chunk in chunks:
        views.append(feature_chunk(chunk, dim, base))
        base += len(chunk)
    return views


def labels_array(labels):
    """A 1-D numpy integer array of Arrow labels (a view for a single chunk), refusing nulls."""
    pa = _pa()
    column = _arrow_column(labels, "labels")
    if not pa.types.is_integer(column.type):
        raise ValueError(f"labels must be integers, got Arrow type {column.type}")
    parts, base = [], 0
    for chunk in _chunks(column):
        if chunk.null_count:
            raise ValueError(f"labels row {base + _first(chunk.is_null())} is null")
        parts.append(chunk.to_numpy(zero_copy_only=True))
        base += len(chunk)
    if not parts:  # a ChunkedArray without chunks
        return column.combine_chunks().to_numpy(zero_copy_only=True)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def batch(features, labels, dim):
    """(feature chunks, labels) for the native update: Arrow input read as numpy views; numpy
    (or other) input passed on as it is."""
    chunks = feature_chunks(features, dim) if is_arrow(features) else [features]
    if is_arrow(labels):
        labels = labels_array(labels)
    return chunks, labels


def table_columns(table, feature_column, label_column):
    """The feature and label columns of a pyarrow Table or RecordBatch (or an object exporting
    the Arrow stream/array interface, e.g. a polars DataFrame)."""
    pa = _pa()
    if not isinstance(table, (pa.Table, pa.RecordBatch)):
        if hasattr(table, "__arrow_c_stream__"):
            table = pa.table(table)
        elif hasattr(table, "__arrow_c_array__"):
            table = pa.record_batch(table)
        else:
            raise ValueError(
                f"update_table takes a pyarrow Table or RecordBatch, got {type(table).__name__}"
            )
    names = table.schema.names
    for name in (feature_column, label_column):
        if name not in names:
            raise ValueError(f"no column {name!r}; the table's columns are {names}")
    return table.column(feature_column), table.column(label_column)
