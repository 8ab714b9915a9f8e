"""A minimal safetensors reader (F32, F64, F16, BF16, I64, I32), numpy only."""

import json
import struct

import numpy as np

_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4"}


def read_safetensors(data: bytes) -> "tuple[dict[str, np.ndarray], dict[str, str]]":
    """Tensors (as numpy arrays) and the `__metadata__` of a safetensors file's bytes."""
    if len(data) < 8:
        raise ValueError("not a safetensors file: shorter than its 8-byte header length")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise ValueError(f"not a safetensors file: header of {header_len} bytes in a {len(data)}-byte file")
    header = json.loads(data[8 : 8 + header_len])
    body = memoryview(data)[8 + header_len :]
    metadata = header.pop("__metadata__", {}) or {}
    tensors = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        raw = body[start:end]
        if info["dtype"] == "BF16":
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            array = bits.view(np.float32)
        elif info["dtype"] in _DTYPES:
            array = np.frombuffer(raw, dtype=_DTYPES[info["dtype"]])
        else:
            raise ValueError(f"tensor {name!r}: unsupported dtype {info['dtype']}")
        if array.size != int(np.prod(shape)):
            raise ValueError(f"tensor {name!r}: {array.size} values for shape {shape}")
        tensors[name] = array.reshape(shape).copy()
    return tensors, metadata
