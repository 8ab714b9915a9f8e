"""Type stubs of the native module (Rust, PyO3)."""

from os import PathLike
from types import TracebackType
from typing import Any, Literal, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

__version__: str

_Path = Union[str, PathLike[str]]

class Stats:
    """Streaming sufficient statistics for least-squares heads (float64, exact, mergeable)."""

    def __init__(
        self,
        dim: int,
        precision: str = "exact",
        threads: Optional[int] = None,
        expand: Optional[RandomFeatures] = None,
    ) -> None:
        """A state for `dim` features; `precision="fast"` computes batch products in float32;
        `threads` computes them on that many threads (None or 0: every available core).
        With `expand=RandomFeatures(dim, m, seed)`, `update` takes raw (B, dim) features and
        the statistics are of z = ReLU(x·R): `dim` becomes m, `input_dim` stays dim."""
    threads: int
    """Threads computing each batch's product (settable; 0 means every available core)."""
    def update(self, features: npt.ArrayLike, labels: npt.ArrayLike) -> None:
        """Adds (B, d) float32/float64 features (any layout; other dtypes raise ValueError: convert
        first, e.g. x.astype(np.float32)) and (B,) integer labels; ValueError on bad input, with
        no change. Safe to call from several threads on one Stats: calls take turns."""
    def retract(self, features: npt.ArrayLike, labels: npt.ArrayLike) -> None:
        """Removes a batch added since the last task boundary; ValueError if it is not held."""
    def merge(self, other: Stats) -> None:
        """Adds another state's statistics (exact)."""
    def begin_task(self) -> None:
        """Marks a task boundary for `solve(scope="task")`."""
    def decay(self, gamma: float) -> None:
        """Multiplies every sum and weight by gamma in (0, 1] (a forgetting factor); ValueError
        for gamma outside (0, 1] or a weight that would fall below 1e-9, with no change."""
    @property
    def n(self) -> int: ...
    @property
    def task_n(self) -> int: ...
    @property
    def weight(self) -> float:
        """The total sample weight solves divide by: `n` until a `decay`."""
    @property
    def task_weight(self) -> float: ...
    @property
    def dim(self) -> int:
        """The statistics' dimension (the expansion's m for an expanded state)."""
    @property
    def input_dim(self) -> int:
        """The dimension of the features `update` takes."""
    @property
    def expansion(self) -> Optional[RandomFeatures]: ...
    @property
    def tasks_begun(self) -> int: ...
    @property
    def precision(self) -> str: ...
    @property
    def classes(self) -> list[int]: ...
    @property
    def task_classes(self) -> list[int]: ...
    def class_count(self, id: int) -> int: ...
    def class_weight(self, id: int) -> float: ...
    def copy(self) -> Stats: ...
    def save(self, path: _Path) -> None:
        """Writes the CLI's state file format (.hs), atomically."""
    @staticmethod
    def load(path: _Path) -> Stats:
        """Reads a state file; OSError if unreadable, ValueError if damaged."""
    def to_bytes(self) -> bytes: ...
    @staticmethod
    def from_bytes(data: bytes) -> Stats: ...
    def solve(
        self,
        form: str = "nc",
        lam: Union[None, float, str] = None,
        classes: Optional[Sequence[int]] = None,
        bias: bool = True,
        scope: str = "all",
        val: Union[None, Stats, tuple[npt.ArrayLike, npt.ArrayLike]] = None,
        grid: Optional[Sequence[Union[float, str]]] = None,
    ) -> Head:
        """Solves the head for `classes` (default all, ascending); ValueError names the problem.

        `lam`: None or "rel" (0.01 x the mean eigenvalue tr(G/N)/d, scale-free), "rel:R", an
        absolute number, or "auto" (lowest held-out MSE on `val` over `grid`)."""
    def _parts(self) -> dict[str, Any]: ...
    @staticmethod
    def _from_parts(parts: dict[str, Any]) -> Stats: ...

class Head:
    """A solved head: logits = features @ weight.T + bias."""

    @property
    def weight(self) -> npt.NDArray[np.float64]: ...
    @property
    def bias(self) -> npt.NDArray[np.float64]: ...
    @property
    def class_ids(self) -> npt.NDArray[np.int64]: ...
    @property
    def dim(self) -> int: ...
    @property
    def lam(self) -> float: ...
    @property
    def lam_rule(self) -> str:
        """"rel:R" for a relative lambda, else the absolute number."""
    @property
    def form(self) -> str: ...
    @property
    def scope(self) -> str: ...
    @property
    def samples(self) -> int: ...
    @property
    def expansion(self) -> Optional[RandomFeatures]:
        """The expansion its inputs go through (then `dim` is its m), or None."""
    def save(self, path: _Path, prefix: str = "") -> None:
        """Writes the CLI's safetensors format (with the expansion's spec, if any)."""

class RandomFeatures:
    """z = ReLU(x·R), R (dim, m) regenerated bit for bit from `seed` (Philox4x32-10)."""

    def __init__(self, dim: int, m: int, seed: int = 0) -> None: ...
    @property
    def dim(self) -> int: ...
    @property
    def m(self) -> int: ...
    @property
    def seed(self) -> int: ...
    @property
    def spec(self) -> str:
        """The spec as JSON, as state and head files record it."""
    def matrix(self) -> npt.NDArray[np.float32]:
        """R, (dim, m) float32."""
    def transform(self, x: npt.ArrayLike) -> npt.NDArray[Any]:
        """ReLU(x @ R): float32 in and out (f32 products), or float64 in and out (f64)."""

class ServerError(Exception):
    """The server answered with an ERROR frame."""

    code: str
    """The error code's name: "Malformed", "TooLarge", "TooManyRows", "BadBatch", "Session",
    "Solve", "Durability", "IdleTimeout", "Unavailable", "Unauthorized", "Forbidden" or
    "Transport"."""
    fatal: bool
    """Whether the server closed the connection (every later call raises ConnectionError)."""
    message: str
    """The server's message."""

class Client:
    """A connection to `headstart serve`: pushes batches, marks task boundaries, syncs the
    state file, reads its summary and solves heads on the server (the Rust client, wrapped).

    Safe to share between threads: calls take turns, with the GIL released. Use it as a
    context manager: leaving the block without an exception flushes; it always closes.

    Raises ServerError (an ERROR frame: "Unauthorized" for a missing or wrong token,
    "Forbidden" for a push token asking more, "Transport" for TLS against plaintext or the
    other way round, ...), TimeoutError, ConnectionError (I/O, an untrusted certificate, a
    closed or failed connection) and ValueError (arguments and arrays refused before sending).
    """

    def __init__(
        self,
        address: str,
        token: Optional[str] = None,
        token_file: Optional[_Path] = None,
        tls_ca: Optional[_Path] = None,
        timeout: Optional[float] = 60.0,
        window: int = 8,
        reconnect: Optional[float] = 60.0,
    ) -> None:
        """Connects to "HOST:PORT" or "unix:PATH" and runs the TLS and token handshakes.

        The token is `token`, else the first token of `token_file` (mode 0600), else the
        environment variable HEADSTART_TOKEN, else none; `tls_ca`: a PEM file of the CA that
        signed the server's certificate (`headstart certs`), for TLS; `timeout`: seconds for
        the connection and each later read or write (None: forever); `window`: batches `push`
        may leave awaiting their acknowledgement; `reconnect`: seconds a call keeps
        reconnecting after the connection drops (0 or None: none). With it the session is
        resumable and each batch is applied exactly once: batches are kept until `sync` makes
        them durable, and after a drop or a server restart the client resumes and sends again
        what the server lacks (docs/protocol.md, "Exactly-once pushes"). `close()` flushes
        but does not sync: call `sync()` first if the batches must survive a server crash
        after the client is gone."""
    def push(self, features: npt.ArrayLike, labels: npt.ArrayLike) -> None:
        """Sends (B, dim) float32/float64 features and (B,) integer labels; the first push opens
        the session in the array's dtype, later ones are converted to it. Bad arrays (shape,
        dtype, NaN/inf, magnitude) raise ValueError and send nothing. Returns once at most
        `window - 1` batches await their acknowledgement; a refused batch raises ServerError
        from this or a later call."""
    def flush(self) -> None:
        """Waits until every pushed batch is acknowledged (ServerError for a refused one)."""
    def begin_task(self) -> None:
        """Marks a task boundary on the server (admin)."""
    def sync(self) -> int:
        """Returns once every acknowledged batch is in the state file: its sample count (push or
        admin). Drops the batches kept for resending."""
    def stats(self) -> dict[str, Any]:
        """The server's state summary: dim, samples, classes (id -> count), tasks_begun,
        task_samples, ... (admin)."""
    def solve(
        self,
        form: str = "nc",
        bias: bool = True,
        lam: Union[None, float, str] = None,
        lambda_rel: Optional[float] = None,
        scope: str = "all",
        classes: Optional[Sequence[int]] = None,
        prefix: str = "",
    ) -> Head:
        """Solves a head on the server (admin). `lam`: absolute number, "rel" or "rel:R";
        `lambda_rel`: R (not both); with neither, the server's scale-free default. A refused
        solve raises ServerError with code "Solve" and keeps the connection."""
    def close(self) -> None:
        """Flushes (unless the connection failed), then closes; closing twice is harmless."""
    def __enter__(self) -> Client: ...
    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> Literal[False]: ...
    @property
    def acknowledged(self) -> int:
        """Batches pushed and acknowledged; after a refusal, the index of the refused one."""
    @property
    def sent(self) -> int:
        """Batches pushed (acknowledged or not)."""
    @property
    def reconnects(self) -> int:
        """Times the client reconnected and resumed its session."""
    @property
    def unsynced(self) -> int:
        """Pushed batches kept for resending until a `sync`."""
    @property
    def role(self) -> str:
        """"push" or "admin" (also on a server without tokens)."""
    @property
    def dim(self) -> int:
        """The server's feature dimension."""
    @property
    def is_tls(self) -> bool: ...
    @property
    def address(self) -> str: ...
    @property
    def closed(self) -> bool: ...
    window: int
    """Batches `push` may leave unacknowledged (settable, at least 1)."""
    timeout: Optional[float]
    """Seconds each read or write may wait (settable; None: forever)."""

def fit_scale(
    fixed: npt.NDArray[np.float64],
    new: npt.NDArray[np.float64],
    targets: npt.NDArray[np.int64],
    max_logit: float = 30.0,
) -> tuple[float, float, float, bool]:
    """The scale of the new rows' logits that minimises the mean cross-entropy on a sample:
    (scale, loss at 1, loss at scale, whether the cap was hit: new logits at most
    max_logit beyond the largest |fixed| logit)."""
