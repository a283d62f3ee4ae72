"""``collate`` and ``Collate``: samples to one batch, for ``DataLoader(collate_fn=...)``.

Three stages, one way: :func:`~tensorbridge.batch.samples.split` checks every sample against
the first and cuts the batch into leaf columns; :func:`~tensorbridge.batch.columns.plan` decides
what each column becomes (its kinds, dtypes and devices checked before anything is allocated);
then the batch's memory is allocated (:mod:`~tensorbridge.batch.memory`) and each column is
written into it in one copy, which checks the shapes itself (a mismatch raises, naming the
sample, and no half-built batch is handed back).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import DeviceError, UnsupportedError
from ..options import ToTensorOptions, tensor_options
from .columns import fill, plan
from .memory import Placement, allocate, in_worker
from .samples import rebuild, split

__all__ = ["Collate", "collate"]


def collate(
    samples: Iterable[Any], *, dtype: object = None, pin_memory: bool = False, shared: bool | None = None
) -> Any:
    """Stack a list of samples into one batch, keeping every container's type.

    Each leaf position is stacked along a new first axis into one tensor, written there in one
    copy (a batch of one is fresh memory too; it never shares memory with a sample). What
    differs from ``torch.utils.data.default_collate``:

    * containers keep their types: a tuple stays a tuple (``default_collate`` makes it a
      list), namedtuples, dataclasses (frozen too), attrs classes, every Mapping, and registered
      or pytree-registered containers are rebuilt as they are;
    * every dtype and layout ``to_tensor`` takes works: bfloat16/float8 (``ml_dtypes``),
      big-endian, negative strides (``img[..., ::-1]``), read-only arrays (copied, never
      aliased, no warning), tensors that require grad (their values are copied: a batch does
      not require grad), and NumPy arrays mixed with tensors in one column;
    * nothing changes silently: samples whose keys, lengths, shapes or dtypes differ raise
      :class:`StructureError` naming the sample and the key path (``samples[3]['image']``);
      a ``[float32, float64]`` column is not promoted; a masked array raises as in ``to_tensor``.

    NumPy scalars stack to their dtype; Python ``bool``/``int``/``float``/``complex`` to
    bool/int64/float64/complex128 (never mixed); strings, bytes and ``None`` pass through as
    lists.

    Args:
        samples: a sequence of samples of one structure.
        dtype: a cast for every leaf (checked, as in :func:`to_tensor`), or a mapping from
            source dtype to target that casts only the leaves whose dtype is a key:
            ``{np.float64: torch.float32}``.
        pin_memory: build the batch in one page-locked allocation (needs CUDA; in the main
            process: DataLoader workers cannot pin).
        shared: build the batch in one shared-memory segment; ``None`` (default): in DataLoader
            worker processes only, as ``default_collate`` does, so the main process copies nothing.

    Returns:
        The batch, in the first sample's containers.

    Raises:
        StructureError: (ValueError) no samples, or samples that differ in structure, shape
            or dtype.
        UnsupportedError: (TypeError) a leaf that is neither an array, tensor, number nor
            string, or one ``to_tensor`` refuses.
        ValueRangeError: (ValueError) a cast that would change a value.
        DeviceError: (RuntimeError) ``pin_memory=True`` without CUDA, or in a worker process.

    Example:
        >>> import numpy as np, tensorbridge as tb
        >>> samples = [(np.full(3, i, np.float32), i) for i in range(4)]
        >>> images, labels = tb.collate(samples)  # a tuple, as the samples are
        >>> images.shape, labels.tolist()
        (torch.Size([4, 3]), [0, 1, 2, 3])
    """
    return _collate(samples, _options(dtype), _placement(pin_memory, shared))


def _options(dtype: object) -> ToTensorOptions:
    return tensor_options(dtype=dtype)


def _placement(pin_memory: object, shared: object) -> Placement:
    if pin_memory is not True and pin_memory is not False:
        raise UnsupportedError(
            "collate", "pin_memory", f"pin_memory must be True or False, not {pin_memory!r}", "Pass one of those"
        )
    if shared is not None and shared is not True and shared is not False:
        raise UnsupportedError(
            "collate", "shared", f"shared must be None, True or False, not {shared!r}", "Pass one of those"
        )
    if pin_memory:
        if shared:
            raise UnsupportedError(
                "collate", "shared", "a batch cannot be both pinned and shared", "Pass pin_memory=True or shared=True"
            )
        return "pinned"
    if shared is None:
        return "shared" if in_worker() else "fresh"
    return "shared" if shared else "fresh"


def _collate(samples: Iterable[Any], opts: ToTensorOptions, placement: Placement) -> Any:
    if placement == "pinned" and in_worker():
        raise DeviceError(
            "collate",
            "pin_memory",
            "pin_memory=True in a DataLoader worker process: pinning needs CUDA, which workers must not use",
            "Collate in shared memory there (the default) and move batches with tb.prefetch(loader, device)",
        )
    seq: Sequence[Any] = samples if isinstance(samples, (list, tuple)) else list(samples)
    cols = split(seq)
    planned = [
        plan(values, path, opts, "samples", text=True) for path, values in zip(cols.paths, cols.columns, strict=True)
    ]
    outs = allocate(planned, placement)
    return rebuild(cols, [fill(col, out) for col, out in zip(planned, outs, strict=True)])


class Collate:
    """A picklable collate function with options, for ``DataLoader(collate_fn=tb.Collate(...))``.

    The options are those of :func:`collate`, validated once here. Pickling keeps the options
    as given, so worker processes (spawned or forked) validate them again for themselves.

    Example:
        >>> import numpy as np, torch, tensorbridge as tb
        >>> to_f32 = tb.Collate(dtype={np.float64: torch.float32})
        >>> batch = to_f32([{"x": np.ones(2), "id": 1}, {"x": np.zeros(2), "id": 2}])
        >>> batch["x"].dtype, batch["id"].dtype
        (torch.float32, torch.int64)
    """

    __slots__ = ("_dtype", "_opts", "_pin_memory", "_shared")

    def __init__(self, *, dtype: object = None, pin_memory: bool = False, shared: bool | None = None) -> None:
        self._dtype, self._pin_memory, self._shared = dtype, pin_memory, shared
        self._opts = _options(dtype)
        _placement(pin_memory, shared)  # validated now; decided per call (a worker or not)

    def __call__(self, samples: Iterable[Any]) -> Any:
        """Collate ``samples`` (see :func:`collate`)."""
        return _collate(samples, self._opts, _placement(self._pin_memory, self._shared))

    def __getstate__(self) -> dict[str, Any]:
        return {"dtype": self._dtype, "pin_memory": self._pin_memory, "shared": self._shared}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]  # re-validated in the receiving process

    def __repr__(self) -> str:
        return f"tb.Collate(dtype={self._dtype!r}, pin_memory={self._pin_memory!r}, shared={self._shared!r})"

    def __eq__(self, other: object) -> bool:
        # The normalized options: dtype="float32" and dtype=torch.float32 collate alike.
        if not isinstance(other, Collate):
            return NotImplemented
        return (self._opts, self._pin_memory, self._shared) == (other._opts, other._pin_memory, other._shared)

    def __hash__(self) -> int:
        # A dtype mapping is held in dicts: hashed as sets of its pairs, as equal mappings compare.
        m = self._opts.dtype_map
        pairs = None if m is None else (frozenset(m.by_torch.items()), frozenset(m.by_numpy.items()))
        return hash((self._opts.dtype, pairs, self._pin_memory, self._shared))
