"""Type stubs of the native module (Rust, PyO3)."""

from os import PathLike
from typing import Any, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

__version__: str

_Path = Union[str, PathLike[str]]

class Stats:
    """Streaming sufficient statistics for least-squares heads (float64, exact, mergeable)."""

    def __init__(self, dim: int, precision: str = "exact", threads: Optional[int] = None) -> None:
        """A state for `dim` features; `precision="fast"` computes batch products in float32;
        `threads` computes them on that many threads (None or 0: every available core)."""
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
    @property
    def n(self) -> int: ...
    @property
    def task_n(self) -> int: ...
    @property
    def dim(self) -> int: ...
    @property
    def tasks_begun(self) -> int: ...
    @property
    def precision(self) -> str: ...
    @property
    def classes(self) -> list[int]: ...
    @property
    def task_classes(self) -> list[int]: ...
    def class_count(self, id: int) -> int: ...
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
    def save(self, path: _Path, prefix: str = "") -> None:
        """Writes the CLI's safetensors format."""

def fit_scale(
    fixed: npt.NDArray[np.float64],
    new: npt.NDArray[np.float64],
    targets: npt.NDArray[np.int64],
    max_logit: float = 30.0,
) -> tuple[float, float, float, bool]:
    """The scale of the new rows' logits that minimises the mean cross-entropy on a sample:
    (scale, loss at 1, loss at scale, whether the cap was hit: new logits at most
    max_logit beyond the largest |fixed| logit)."""
