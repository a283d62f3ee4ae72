"""Quantized tensors and :class:`QuantizedArray`, the NumPy form of their integer codes.

- **Quantized tensors.** ``to_numpy`` needs a choice: ``quantized='dequantize'`` gives float32
  values, ``quantized='int'`` a :class:`QuantizedArray` (the integer codes, a view of the
  tensor's memory, with scale and zero point); no choice raises and offers both.
- **QuantizedArray.** ``to_tensor`` rebuilds the quantized tensor (the codes copied, bit-exact);
  ``to_numpy`` returns it as it is, or float32 values with ``quantized='dequantize'``.

``layouts.py`` holds the adapter that claims these leaves and dispatches here; it also keeps a
quantized tensor quantized under ``to_tensor`` (the same code path as nested tensors). Quantized
and nested tensors share nothing else, so each kind has its own module (``nested.py``).

Planning reads the dtype, device, qscheme and parameters' shapes; dequantizing, reading the
codes and rebuilding a tensor from a QuantizedArray run with the conversion.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, NoReturn

import numpy as np
import torch

from ..errors import StructureError, UnsupportedError
from ..plan.core import ToNumpyOptions, describe_tensor
from ._special import _refuse_copy, _torch_notices_muted
from .base import Adoption

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


def _quantized_to_numpy(t: torch.Tensor, opts: ToNumpyOptions, path: str) -> Adoption:
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

        def floats() -> torch.Tensor:
            with torch.no_grad():
                return t.dequantize()

        return _dequantized(floats, t.device, _scheme(t), opts, source)
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
    copied = t.device.type != "cpu"
    if copied and opts.copy is False:
        _refuse_copy("to_numpy", path, f"the codes live on {t.device} and must be copied to the host")
    fresh = opts.copy is True and not copied

    def codes() -> QuantizedArray:
        values = _codes_view(t).cpu().numpy()
        if fresh:
            values = values.copy(order="K")
        scale, zero_point, axis = _qparams(t)
        return QuantizedArray(values, scale, zero_point, axis, str(t.dtype).removeprefix("torch."), _scheme(t))

    copied = copied or fresh
    memory = "fresh memory" if copied else "a view of the tensor's memory"
    per = "per tensor" if _scheme(t).startswith("per_tensor") else f"per channel along axis {t.q_per_channel_axis()}"
    codes_dtype = str(_CODES[t.dtype]).removeprefix("torch.")
    why = f"quantized='int': the {codes_dtype} codes ({memory}) with their scale and zero point {per}"
    return Adoption("adopt_copy" if copied else "adopt", why, codes, done=True, source=source)


def _dequantized(
    floats: Callable[[], torch.Tensor], device: torch.device, scheme: str, opts: ToNumpyOptions, source: str
) -> Adoption:
    why = f"quantized='dequantize': (code - zero point) * scale, {scheme}, float32 in fresh memory"
    if opts.dtype in (None, np.dtype(np.float32)) and device.type == "cpu":
        # Already fresh memory: handing the array over here keeps copy=True from copying twice.
        return Adoption("adopt_copy", why, lambda: floats().numpy(), done=True, source=source)
    return Adoption("adopt_copy", why, floats, source=source)


def _rebuilder(qa: QuantizedArray, what: str, path: str) -> Callable[[], torch.Tensor]:
    """What rebuilds the quantized tensor a QuantizedArray describes, once its fields are checked.

    The fields' dtypes and shapes are checked now; the rebuild (torch always copies the codes)
    runs when the returned function is called.
    """
    qdtype = _QDTYPES.get(qa.dtype)
    values = qa.values
    codes_dtype = values.dtype if isinstance(values, np.ndarray) else np.asarray(values).dtype
    native = codes_dtype.newbyteorder("=")
    if qdtype is None or native != np.dtype(str(_CODES[qdtype]).removeprefix("torch.")):
        raise UnsupportedError(
            what,
            path,
            f"a QuantizedArray of dtype {qa.dtype!r} with {codes_dtype} values is not one torch can rebuild",
            "Use int8 values for 'qint8', uint8 for 'quint8' or int32 for 'qint32'",
        )
    shape, ndim = np.shape(values), np.ndim(values)
    floats = qa.qscheme == "per_channel_affine_float_qparams"
    scale_shape, zero_shape = np.shape(qa.scale), np.shape(qa.zero_point)
    # torch checks none of this when building, only when the values are first read.
    if qa.axis is None:
        problem = (
            None
            if np.size(qa.scale) == np.size(qa.zero_point) == 1
            else "a per-tensor scale and zero point are one value each"
        )
    elif not -ndim <= qa.axis < ndim:
        problem = f"axis {qa.axis} is out of range for {ndim}-d values"
    else:
        n = shape[qa.axis]
        problem = (
            None
            if scale_shape == zero_shape == (n,)
            else f"per channel along axis {qa.axis}, scale and zero_point need shape ({n},), "
            f"not {scale_shape} and {zero_shape}"
        )
    if problem is not None:
        raise StructureError(
            what,
            path,
            f"the QuantizedArray does not describe a quantized tensor: {problem}",
            "Fix its scale, zero_point or axis",
        )

    def rebuild() -> torch.Tensor:
        codes = np.asarray(qa.values)
        if not codes.dtype.isnative or min(codes.strides, default=0) < 0:
            codes = np.array(codes, dtype=native, order="C")
        scale = np.asarray(qa.scale, np.float32 if floats else np.float64)
        zero_point = np.asarray(qa.zero_point, np.float32 if floats else np.int64)
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

    return rebuild


def _quantized_array_to_numpy(qa: QuantizedArray, opts: ToNumpyOptions, path: str) -> Adoption:
    if opts.interop.quantized == "dequantize":
        if opts.copy is False:
            _refuse_copy("to_numpy", path, "dequantizing computes new float32 values", "Pass copy=None")
        rebuild = _rebuilder(qa, "to_numpy", path)

        def floats() -> torch.Tensor:
            with torch.no_grad():
                return rebuild().dequantize()

        return _dequantized(floats, torch.device("cpu"), qa.qscheme, opts, repr(qa))
    if opts.dtype is not None:
        raise UnsupportedError(
            "to_numpy",
            path,
            f"dtype={opts.dtype} would cast a QuantizedArray's integer codes apart from their scale and zero point",
            "Pass quantized='dequantize' with dtype= for floats, or cast result.values yourself",
        )
    if opts.copy is True:

        def fresh() -> QuantizedArray:
            return QuantizedArray(qa.values.copy(order="K"), qa.scale.copy(), qa.zero_point.copy(), *_tail(qa))

        return Adoption("adopt_copy", "copy=True: the codes and parameters copied", fresh, done=True, source=repr(qa))
    why = "a QuantizedArray is NumPy data already: returned as it is"
    return Adoption("adopt", why, lambda: qa, done=True, source=repr(qa), free=True)


def _tail(qa: QuantizedArray) -> tuple[int | None, str, str]:
    return qa.axis, qa.dtype, qa.qscheme
