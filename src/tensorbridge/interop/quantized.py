"""Quantized tensors and :class:`QuantizedArray`, the NumPy form of their integer codes.

- **Quantized tensors.** ``to_numpy`` needs a choice: ``quantized='dequantize'`` gives float32
  values, ``quantized='int'`` a :class:`QuantizedArray` (the integer codes, a view of the
  tensor's memory, with scale and zero point); no choice raises and offers both.
- **QuantizedArray.** ``to_tensor`` rebuilds the quantized tensor (the codes copied, bit-exact);
  ``to_numpy`` returns it as it is, or float32 values with ``quantized='dequantize'``.

``layouts.py`` holds the adapter that claims these leaves and dispatches here; it also keeps a
quantized tensor quantized under ``to_tensor`` (the same code path as nested tensors). Quantized
and nested tensors share nothing else, so each kind has its own module (``nested.py``).
"""

from __future__ import annotations

from typing import Any, Final, NoReturn

import numpy as np
import torch

from ..errors import StructureError, UnsupportedError
from ..plan.core import ToNumpyOptions, describe_tensor
from ._special import _refuse_copy, _torch_notices_muted
from .base import Adopted, adopted, finished

__all__ = ["QuantizedArray"]

# The integer dtype of each quantized dtype's codes; sub-byte kinds (quint4x2, quint2x4) pack
# several codes to a byte, so they have no row: int_repr() hands out the packed bytes.
_CODES: Final[dict[torch.dtype, torch.dtype]] = {
    torch.qint8: torch.int8,
    torch.quint8: torch.uint8,
    torch.qint32: torch.int32,
}
_QDTYPES: Final[dict[str, torch.dtype]] = {str(q).removeprefix("torch."): q for q in _CODES}
_QUANT_FIX: Final = (
    "Pass quantized='dequantize' for float32 values, or quantized='int' for the integer codes "
    "with their scale and zero point (a QuantizedArray)"
)


class QuantizedArray:
    """The integer codes of a quantized tensor, with the parameters that give them meaning.

    ``to_numpy(q, quantized="int")`` returns one; ``to_tensor`` turns it back into the same
    quantized tensor (bit-exact codes and parameters). A value is ``(code - zero_point) * scale``,
    per tensor or per channel along ``axis``. It is a leaf, not a container: tensorbridge
    never walks into it, so its parts never travel apart.

    Attributes:
        values: the codes, same shape as the tensor: int8 (qint8), uint8 (quint8) or int32 (qint32).
        scale: float64 (float32 for ``per_channel_affine_float_qparams``); 0-d per tensor,
            one per channel otherwise.
        zero_point: int64 (float32 for ``per_channel_affine_float_qparams``), shaped like ``scale``.
        axis: the channel axis, or None per tensor.
        dtype: torch's quantized dtype, by name: ``"qint8"``, ``"quint8"`` or ``"qint32"``.
        qscheme: ``"per_tensor_affine"``, ``"per_channel_affine"`` or
            ``"per_channel_affine_float_qparams"``.

    Example:
        >>> import numpy as np
        >>> qa = QuantizedArray(np.array([3, 5], np.int8), np.array(0.5), np.array(1), None, "qint8")
        >>> qa.shape, qa.qscheme
        ((2,), 'per_tensor_affine')
        >>> ((qa.values - qa.zero_point) * qa.scale).tolist()
        [1.0, 2.0]
    """

    __slots__ = ("axis", "dtype", "qscheme", "scale", "values", "zero_point")

    values: np.ndarray[Any, Any]
    scale: np.ndarray[Any, Any]
    zero_point: np.ndarray[Any, Any]
    axis: int | None
    dtype: str
    qscheme: str

    def __init__(
        self,
        values: np.ndarray[Any, Any],
        scale: np.ndarray[Any, Any],
        zero_point: np.ndarray[Any, Any],
        axis: int | None,
        dtype: str,
        qscheme: str | None = None,
    ) -> None:
        default = "per_tensor_affine" if axis is None else "per_channel_affine"
        parts = zip(self.__slots__, (axis, dtype, qscheme or default, scale, values, zero_point), strict=True)
        for name, value in parts:
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"QuantizedArray is immutable: build a new one instead of setting {name!r}")

    def __reduce__(self) -> tuple[type[QuantizedArray], tuple[Any, ...]]:
        return QuantizedArray, (self.values, self.scale, self.zero_point, self.axis, self.dtype, self.qscheme)

    @property
    def shape(self) -> tuple[int, ...]:
        """The tensor's shape (that of ``values``)."""
        return tuple(self.values.shape)

    def __repr__(self) -> str:
        per = "per tensor" if self.axis is None else f"per channel, axis {self.axis}"
        return (
            f"QuantizedArray({self.dtype}, shape {self.shape}, {self.qscheme} ({per}), "
            f"scale {self.scale.tolist()}, zero_point {self.zero_point.tolist()})"
        )


def _scheme(t: torch.Tensor) -> str:
    return str(t.qscheme()).removeprefix("torch.")


def _describe_scheme(t: torch.Tensor) -> str:
    scheme = _scheme(t)
    if scheme.startswith("per_tensor"):
        return f"{scheme}, scale {t.q_scale()}, zero point {t.q_zero_point()}"
    return f"{scheme} along axis {t.q_per_channel_axis()}, {t.q_per_channel_scales().numel()} channels"


def _qparams(t: torch.Tensor) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], int | None]:
    if _scheme(t).startswith("per_tensor"):
        return np.array(t.q_scale(), np.float64), np.array(t.q_zero_point(), np.int64), None
    scales = t.q_per_channel_scales().detach().cpu().numpy()
    zero_points = t.q_per_channel_zero_points().detach().cpu().numpy()
    return scales, zero_points, int(t.q_per_channel_axis())


def _codes_view(t: torch.Tensor) -> torch.Tensor:
    """The quantized tensor's codes as a plain integer tensor over the same memory.

    ``int_repr()`` always copies; the codes are stored as plain integers, so an integer tensor
    set on the same storage, offset and strides reads (and writes) exactly them.
    """
    codes = torch.empty(0, dtype=_CODES[t.dtype], device=t.device)
    return codes.set_(t.untyped_storage(), t.storage_offset(), t.size(), t.stride())


def _quantized_to_numpy(t: torch.Tensor, opts: ToNumpyOptions, path: str) -> Adopted:
    choice = opts.interop.quantized
    source = f"{describe_tensor(t)}, {_describe_scheme(t)}"
    if choice is None:
        raise UnsupportedError(
            "to_numpy",
            path,
            f"quantized tensor ({str(t.dtype).removeprefix('torch.')}, {_describe_scheme(t)}): NumPy has no "
            "quantized dtype, and float values and integer codes are different results",
            _QUANT_FIX,
        )
    if choice == "dequantize":
        if opts.copy is False:
            _refuse_copy(
                "to_numpy", path, "dequantizing computes new float32 values", "Pass copy=None, or quantized='int'"
            )
        with torch.no_grad():
            floats = t.dequantize()
        return _dequantized(floats, _scheme(t), opts, source)
    if opts.dtype is not None:
        raise UnsupportedError(
            "to_numpy",
            path,
            f"dtype={opts.dtype} with quantized='int' would cast the integer codes apart from their scale "
            "and zero point",
            "Pass quantized='dequantize' with dtype= for floats, or cast result.values yourself",
        )
    if t.dtype not in _CODES:
        raise UnsupportedError(
            "to_numpy",
            path,
            f"{str(t.dtype).removeprefix('torch.')} packs several codes into each byte, and torch hands out only "
            "the packed bytes",
            "Pass quantized='dequantize' for float32 values",
        )
    codes = _codes_view(t)
    copied = codes.device.type != "cpu"
    if copied and opts.copy is False:
        _refuse_copy("to_numpy", path, f"the codes live on {codes.device} and must be copied to the host")
    values = codes.cpu().numpy()
    if opts.copy is True and not copied:
        values, copied = values.copy(order="K"), True
    scale, zero_point, axis = _qparams(t)
    memory = "fresh memory" if copied else "a view of the tensor's memory"
    per = "per tensor" if axis is None else f"per channel along axis {axis}"
    why = f"quantized='int': the {values.dtype} codes ({memory}) with their scale and zero point {per}"
    result = QuantizedArray(values, scale, zero_point, axis, str(t.dtype).removeprefix("torch."), _scheme(t))
    return finished(result, why, copied=copied, source=source)


def _dequantized(floats: torch.Tensor, scheme: str, opts: ToNumpyOptions, source: str) -> Adopted:
    why = f"quantized='dequantize': (code - zero point) * scale, {scheme}, float32 in fresh memory"
    if opts.dtype in (None, np.dtype(np.float32)) and floats.device.type == "cpu":
        # Already fresh memory: handing the array over here keeps copy=True from copying twice.
        return finished(floats.numpy(), why, copied=True, source=source)
    return adopted(floats, why, copied=True, source=source)


def _rebuild(qa: QuantizedArray, what: str, path: str) -> torch.Tensor:
    """The quantized tensor a QuantizedArray describes; its codes are copied (torch always copies here)."""
    qdtype = _QDTYPES.get(qa.dtype)
    codes = np.asarray(qa.values)
    native = codes.dtype.newbyteorder("=")
    if qdtype is None or native != np.dtype(str(_CODES[qdtype]).removeprefix("torch.")):
        raise UnsupportedError(
            what,
            path,
            f"a QuantizedArray of dtype {qa.dtype!r} with {codes.dtype} values is not one torch can rebuild",
            "Use int8 values for 'qint8', uint8 for 'quint8' or int32 for 'qint32'",
        )
    if not codes.dtype.isnative or min(codes.strides, default=0) < 0:
        codes = np.array(codes, dtype=native, order="C")
    floats = qa.qscheme == "per_channel_affine_float_qparams"
    scale = np.asarray(qa.scale, np.float32 if floats else np.float64)
    zero_point = np.asarray(qa.zero_point, np.float32 if floats else np.int64)
    # torch checks none of this when building, only when the values are first read.
    if qa.axis is None:
        problem = None if scale.size == zero_point.size == 1 else "a per-tensor scale and zero point are one value each"
    elif not -codes.ndim <= qa.axis < codes.ndim:
        problem = f"axis {qa.axis} is out of range for {codes.ndim}-d values"
    else:
        n = codes.shape[qa.axis]
        problem = (
            None
            if scale.shape == zero_point.shape == (n,)
            else f"per channel along axis {qa.axis}, scale and zero_point need shape ({n},), "
            f"not {scale.shape} and {zero_point.shape}"
        )
    if problem is not None:
        raise StructureError(
            what,
            path,
            f"the QuantizedArray does not describe a quantized tensor: {problem}",
            "Fix its scale, zero_point or axis",
        )
    try:
        with _torch_notices_muted():
            ints = torch.from_numpy(codes)  # read only here: the rebuild below copies
            if qa.axis is None:
                return torch._make_per_tensor_quantized_tensor(ints, float(scale), int(zero_point))
            axis = qa.axis % codes.ndim
            scales, zero_points = torch.from_numpy(scale), torch.from_numpy(zero_point)
            return torch._make_per_channel_quantized_tensor(ints, scales, zero_points, axis)
    except (RuntimeError, TypeError, ValueError) as err:
        raise StructureError(
            what, path, f"torch could not rebuild the quantized tensor ({str(err).rstrip('.')})", "Check its fields"
        ) from err


def _quantized_array_to_numpy(qa: QuantizedArray, opts: ToNumpyOptions, path: str) -> Adopted:
    if opts.interop.quantized == "dequantize":
        if opts.copy is False:
            _refuse_copy("to_numpy", path, "dequantizing computes new float32 values", "Pass copy=None")
        with torch.no_grad():
            floats = _rebuild(qa, "to_numpy", path).dequantize()
        return _dequantized(floats, qa.qscheme, opts, repr(qa))
    if opts.dtype is not None:
        raise UnsupportedError(
            "to_numpy",
            path,
            f"dtype={opts.dtype} would cast a QuantizedArray's integer codes apart from their scale and zero point",
            "Pass quantized='dequantize' with dtype= for floats, or cast result.values yourself",
        )
    if opts.copy is True:
        fresh = QuantizedArray(qa.values.copy(order="K"), qa.scale.copy(), qa.zero_point.copy(), *_tail(qa))
        return finished(fresh, "copy=True: the codes and parameters copied", copied=True, source=repr(qa))
    return finished(qa, "a QuantizedArray is NumPy data already: returned as it is", copied=False, source=repr(qa))


def _tail(qa: QuantizedArray) -> tuple[int | None, str, str]:
    return qa.axis, qa.dtype, qa.qscheme
