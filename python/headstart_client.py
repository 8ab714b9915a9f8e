"""A Python client for `headstart serve` (protocol version 1, docs/protocol.md).

Standard library and numpy only. A `Client` is one connection and is not meant to be shared
between threads (open one per thread). `push` keeps up to `window` batches (default 8) awaiting
their acknowledgement, so the server applies one while the next travels; every other call, and
`flush`, first waits for those acknowledgements, so its reply covers every batch pushed before.

Example::

    import numpy as np
    from headstart_client import Client, ServerError, read_safetensors

    with Client.connect("127.0.0.1:7000") as client:      # or "unix:/run/headstart.sock"
        client.hello(512, "f32")                           # the server's dimension
        client.push(np.random.rand(64, 512), np.arange(64) % 10)
        print(client.sync(), "samples on disk")
        head = read_safetensors(client.solve(form="nc", lambda_=0.05, prefix="fc."))
        weight, bias = head["fc.weight"], head["fc.bias"]  # logits = weight @ x + bias
        try:
            client.solve(classes=[12345])
        except ServerError as e:                           # e.code == 6, e.name == "Solve"
            print(e)
"""

import collections
import json
import socket
import struct

import numpy as np

__all__ = ["Client", "ServerError", "ProtocolError", "read_safetensors", "read_safetensors_metadata"]

PROTOCOL_VERSION = 1
# Batches `push` leaves unacknowledged unless told otherwise.
DEFAULT_WINDOW = 8

HELLO, BATCH, BEGIN_TASK, SOLVE, SYNC, STATS = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
WELCOME, ACK, TASK_BEGUN, HEAD, SYNCED, STATS_REPLY, ERROR = 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0xFF

ERROR_NAMES = {
    1: "Malformed",
    2: "TooLarge",
    3: "TooManyRows",
    4: "BadBatch",
    5: "Session",
    6: "Solve",
    7: "Durability",
    8: "IdleTimeout",
    9: "Unavailable",
}

_DTYPE_CODES = {np.dtype(np.float32): 1, np.dtype(np.float64): 2}
# Largest |x| the server accepts (so that sums of squares cannot overflow).
MAX_ABS_FEATURE = 2.0**479


class ServerError(Exception):
    """The server answered with an ERROR frame. After a fatal one it closed the connection."""

    def __init__(self, code, fatal, message):
        self.code = code
        self.name = ERROR_NAMES.get(code, f"Unknown{code}")
        self.fatal = fatal
        self.message = message
        closed = ", connection closed" if fatal else ""
        super().__init__(f"server error {code} ({self.name}{closed}): {message}")


class ProtocolError(Exception):
    """The server sent something that does not answer the request."""


def _dtype(dtype):
    dtype = {"f32": np.float32, "f64": np.float64}.get(dtype, dtype)
    try:
        dtype = np.dtype(dtype)
    except TypeError as e:
        raise ValueError(f"dtype must be 'f32', 'f64' or a float32/float64 numpy dtype, not {dtype!r}") from e
    if dtype.newbyteorder("=") not in _DTYPE_CODES:
        raise ValueError(f"dtype must be float32 or float64, not {dtype}")
    return dtype.newbyteorder("=")


class Client:
    """One connection to a server; see the module docstring."""

    def __init__(self, sock, address, window=DEFAULT_WINDOW):
        self._sock = sock
        self.address = address
        self._session = None  # (dim, numpy dtype) after hello
        self._seq = 0
        self._unacked = collections.deque()  # sequence numbers sent, oldest first
        self.window = window

    @property
    def window(self):
        """Batches `push` leaves unacknowledged (1: each push waits until its batch is applied)."""
        return self._window

    @window.setter
    def window(self, value):
        if int(value) < 1:
            raise ValueError(f"window must be at least 1, got {value}")
        self._window = int(value)

    @property
    def acknowledged(self):
        """Batches pushed and acknowledged so far; after a refusal, the refused batch is the one
        pushed after these."""
        return self._seq - len(self._unacked)

    @classmethod
    def connect(cls, address, timeout=None, window=DEFAULT_WINDOW):
        """Connects to "HOST:PORT" (or "[IPV6]:PORT") or "unix:PATH"; `timeout` in seconds;
        `window` batches may await their acknowledgement (see `push`)."""
        if address.startswith("unix:"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(address[len("unix:"):])
            except OSError:
                sock.close()
                raise
        else:
            host, sep, port = address.rpartition(":")
            if not sep or not port.isdigit():
                raise ValueError(f"address must be HOST:PORT or unix:PATH, not {address!r}")
            sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock, address, window)

    # -- requests ---------------------------------------------------------------------------

    def hello(self, dim, dtype="f32"):
        """Opens the session for rows of `dim` features sent as `dtype`; returns the number of
        samples the server holds."""
        dtype = _dtype(dtype)
        body = struct.pack("<IQB", PROTOCOL_VERSION, int(dim), _DTYPE_CODES[dtype])
        reply = self._call(HELLO, body, WELCOME, "HELLO")
        _version, server_dim, samples = struct.unpack("<IQQ", reply)
        if server_dim != dim:
            raise ProtocolError(f"WELCOME for dimension {server_dim}, asked for {dim}")
        self._session = (int(dim), dtype)
        return samples

    def push(self, features, labels):
        """Sends a batch (rows × dim features, one integer label per row); returns once at most
        `window - 1` pushed batches await their acknowledgement (`flush` waits for all; every
        other request waits for them too). Features are sent in the session's dtype. A batch
        the server refuses raises ServerError from this or a later call."""
        if self._session is None:
            raise RuntimeError("push needs a session: call hello first")
        dim, dtype = self._session
        x = np.asarray(features)
        y = np.asarray(labels)
        if x.ndim != 2 or x.shape[1] != dim:
            raise ValueError(f"features must have shape (rows, {dim}), got {x.shape}")
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise ValueError(f"features must be numeric, got dtype {x.dtype}")
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"labels must have shape ({x.shape[0]},), got {y.shape}")
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"labels must be integers, got dtype {y.dtype}")
        if y.dtype == np.uint64 and y.size and y.max() > np.iinfo(np.int64).max:
            raise ValueError("labels above 2^63 - 1 do not fit an i64")
        if x.shape[0] >= 2**32:
            raise ValueError(f"a batch holds fewer than 2^32 rows, got {x.shape[0]}")
        with np.errstate(over="ignore"):
            x = np.ascontiguousarray(x, dtype=dtype.newbyteorder("<"))
        bad = ~np.isfinite(x)
        if dtype == np.float64:  # every finite f32 is below the limit
            bad |= np.abs(x) > MAX_ABS_FEATURE
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"features row {row}, column {col}: {float(x[row, col])} is not finite or above 2^479 "
                f"in {dtype} (the server refuses such batches)"
            )
        self._seq += 1
        labels = np.ascontiguousarray(y, dtype="<i8")
        try:
            self._send(BATCH, struct.pack("<QI", self._seq, x.shape[0]), memoryview(labels).cast("B"),
                       memoryview(x).cast("B"))
        except OSError:
            # A server that refused an earlier batch has closed the connection; its ERROR
            # frame, still readable, says why.
            self.flush()
            raise
        self._unacked.append(self._seq)
        while len(self._unacked) >= self._window:
            self._take_ack()

    def flush(self):
        """Waits until every pushed batch is acknowledged (applied by the server)."""
        while self._unacked:
            self._take_ack()

    def _take_ack(self):
        (seq,) = struct.unpack("<Q", self._read(ACK, "BATCH"))
        if seq != self._unacked[0]:
            raise ProtocolError(f"ACK for batch {seq}, expected {self._unacked[0]}")
        self._unacked.popleft()

    def begin_task(self):
        """Marks a task boundary; returns once it is applied."""
        self._call(BEGIN_TASK, b"", TASK_BEGUN, "BEGIN_TASK")

    def sync(self):
        """Returns once every batch acknowledged so far (on any connection) is on disk: the
        number of samples the state file holds."""
        return struct.unpack("<Q", self._call(SYNC, b"", SYNCED, "SYNC"))[0]

    def solve(self, form="nc", bias=True, lambda_=None, scope="all", classes=None, prefix="", lambda_rel=None):
        """Solves a head; returns the safetensors file's bytes (see `read_safetensors`).
        `lambda_` is an absolute lambda, `lambda_rel` a factor of the features' mean eigenvalue;
        with neither, the server's scale-free default (rel:0.001)."""
        options = {"form": form, "bias": bool(bias), "scope": scope, "prefix": prefix}
        if lambda_ is not None:
            options["lambda"] = float(lambda_)
        if lambda_rel is not None:
            options["lambda_rel"] = float(lambda_rel)
        if classes is not None:
            options["classes"] = [int(c) for c in classes]
        return self._call(SOLVE, json.dumps(options).encode(), HEAD, "SOLVE")

    def stats(self):
        """A summary of the server's state as a dict (dim, samples, classes, ...)."""
        return json.loads(self._call(STATS, b"", STATS_REPLY, "STATS").decode())

    def close(self):
        """Closes the connection. Batches not yet acknowledged may or may not be applied: call
        `flush` first (leaving a `with` block without an exception does)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        try:
            if exc_type is None and self._sock is not None:
                self.flush()
        finally:
            self.close()

    # -- framing ----------------------------------------------------------------------------

    def _send(self, kind, *parts):
        if self._sock is None:
            raise ConnectionError(f"{self.address}: the connection is closed")
        self._sock.sendall(struct.pack("<IB", sum(len(p) for p in parts) + 1, kind))
        for part in parts:
            self._sock.sendall(part)

    def _call(self, kind, body, expected, what):
        self._send(kind, body)
        # Replies come in request order: the pushed batches' ACKs first.
        self.flush()
        return self._read(expected, what)

    def _read(self, expected, what):
        if self._sock is None:
            raise ConnectionError(f"{self.address}: the connection is closed")
        length, reply_kind = struct.unpack("<IB", self._recv_exact(5))
        if length == 0:
            raise ProtocolError("reply frame of length 0")
        reply = self._recv_exact(length - 1)
        if reply_kind == ERROR:
            if len(reply) < 3:
                raise ProtocolError(f"ERROR frame of {len(reply)} bytes")
            code, fatal = struct.unpack("<HB", reply[:3])
            if fatal:
                self.close()
            raise ServerError(code, bool(fatal), reply[3:].decode(errors="replace"))
        if reply_kind != expected:
            raise ProtocolError(f"reply 0x{reply_kind:02x} to {what}, expected 0x{expected:02x}")
        return reply

    def _recv_exact(self, n):
        chunks, left = [], n
        while left:
            chunk = self._sock.recv(min(left, 1 << 20))
            if not chunk:
                self.close()
                raise ConnectionError(f"{self.address}: the server closed the connection")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)


# -- safetensors ------------------------------------------------------------------------------

_ST_DTYPES = {"F32": "<f4", "F64": "<f8", "I64": "<i8"}


def _safetensors_header(data):
    if len(data) < 8:
        raise ValueError("not a safetensors file: shorter than 8 bytes")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise ValueError(f"safetensors header of {n} bytes exceeds the file")
    return json.loads(bytes(data[8 : 8 + n]).decode()), 8 + n


def read_safetensors(data):
    """Parses safetensors bytes into {name: numpy array} (F32, F64 and I64 tensors)."""
    header, start = _safetensors_header(data)
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _ST_DTYPES:
            raise ValueError(f"{name}: unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        dtype = np.dtype(_ST_DTYPES[info["dtype"]])
        shape = tuple(info["shape"])
        if end - begin != dtype.itemsize * int(np.prod(shape, dtype=np.int64)) or start + end > len(data):
            raise ValueError(f"{name}: data offsets {begin}..{end} do not fit shape {shape}")
        tensors[name] = np.frombuffer(data, dtype, offset=start + begin, count=(end - begin) // dtype.itemsize)
        tensors[name] = tensors[name].reshape(shape).astype(dtype.newbyteorder("="))
    return tensors


def read_safetensors_metadata(data):
    """The `__metadata__` dict of safetensors bytes (string values)."""
    return _safetensors_header(data)[0].get("__metadata__", {})
