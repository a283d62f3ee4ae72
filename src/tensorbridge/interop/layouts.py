"""Special tensor kinds: quantized and nested tensors convert by choice; DTensor and fake tensors are refused.

- **Quantized tensors.** ``to_numpy`` needs a choice: ``quantized='dequantize'`` gives float32
  values, ``quantized='int'`` a :class:`QuantizedArray` (the integer codes, a view of the
  tensor's memory, with scale and zero point); no choice raises and offers both.
  ``to_tensor`` keeps a quantized tensor quantized (device moves by torch's ``.to()``,
  ``copy=True`` clones) and refuses ``dtype=`` and ``requires_grad``.
- **QuantizedArray.** ``to_tensor`` rebuilds the quantized tensor (the codes copied, bit-exact);
  ``to_numpy`` returns it as it is, or float32 values with ``quantized='dequantize'``.
- **Nested tensors.** ``to_numpy`` gives a list of arrays, one per component (views where the
  memory is on the host); :func:`nested_tensor` builds one back, bit-exact. ``to_tensor`` keeps
  it nested (device moves, ``copy=True``, ``dtype=`` checked per component).
- **DTensor and fake tensors** are refused both ways, with the fix.

Sparse tensors are ``sparse.py``'s; meta tensors keep the planner's error. Nothing here imports
``torch.distributed``: DTensor and FakeTensor are recognized through ``sys.modules``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final, NoReturn

import numpy as np
import torch

from .._convert.cast import cast_array, cast_tensor
from ..dtypes import DtypeRow, row_for_numpy, row_for_torch, torch_dtype
from ..errors import CopyRefusedError, DeviceError, StructureError, UnsupportedError
from ..plan.core import ToNumpyOptions, ToTensorOptions, describe_tensor
from ..plan.transfer import needs_device, resolve_device
from .base import Adopted, adopted, finished
from .detect import is_instance

__all__ = ["ADAPTER", "QuantizedArray", "nested_tensor"]

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


@contextmanager
def _torch_notices_muted() -> Iterator[None]:
    # torch warns once per process when a quantized tensor is created (the kinds are deprecated)
    # and when a strided nested tensor is (a prototype). Here the caller already holds such a
    # tensor or named the layout: the warning would only repeat what they chose.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions", category=UserWarning)
        warnings.filterwarnings("ignore", message="The PyTorch API of nested tensors", category=UserWarning)
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
        yield


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


# --- recognizing ----------------------------------------------------------------------------


def _is_fake(t: torch.Tensor) -> bool:
    return is_instance(t, "torch._subclasses.fake_tensor", "FakeTensor")


def _is_dtensor(t: torch.Tensor) -> bool:
    return is_instance(t, "torch.distributed.tensor", "DTensor")


def _refuse_unbacked(t: torch.Tensor, what: str, path: str) -> None:
    """Raise for tensors whose memory is not their values: fake tensors and DTensors."""
    if _is_fake(t):
        raise UnsupportedError(
            what,
            path,
            f"fake tensor ({str(t.dtype).removeprefix('torch.')}, shape {tuple(t.shape)}): "
            "fake tensors have a shape but no data",
            "Run the real computation outside torch._subclasses.fake_tensor.FakeTensorMode to get values",
        )
    if _is_dtensor(t):
        placements = ", ".join(repr(p) for p in getattr(t, "placements", ()))
        raise UnsupportedError(
            what,
            path,
            f"DTensor (global shape {tuple(t.shape)}, placements [{placements}]): exported through DLPack or "
            "NumPy it hands out its global shape over this rank's local memory, which may hold only its shard",
            "Call t.full_tensor() to gather the whole tensor, or t.to_local() for this rank's shard",
        )


# --- quantized ------------------------------------------------------------------------------


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


def _refuse_copy(what: str, path: str, why: str, fix: str = "Pass copy=None to allow the copy") -> NoReturn:
    raise CopyRefusedError(what, path, f"copy=False, but {why}", fix)


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


# --- nested ---------------------------------------------------------------------------------


def _component_to_numpy(c: torch.Tensor, opts: ToNumpyOptions, path: str) -> tuple[np.ndarray[Any, Any], list[str]]:
    """One component of a nested tensor (detached, on the host) as NumPy; the copies it took."""
    copies = []
    if c.is_conj() or c.is_neg():
        copies.append("a lazy conjugate/negative bit resolved")
        c = c.resolve_conj().resolve_neg()
    row = row_for_torch(c.dtype)
    if row is None:
        raise UnsupportedError(
            "to_numpy", path, f"dtype {c.dtype} has no NumPy counterpart", "Cast the tensor first, e.g. t.float()"
        )
    if not row.exact:
        wide = row_for_numpy(row.numpy)
        assert wide is not None  # the table pairs every inexact row with an exact one
        copies.append(f"NumPy has no {row.name}; {wide.name} holds it exactly")
        c, row = c.to(wide.torch), wide
    a = _bits_as_numpy(c, row)
    if opts.dtype is not None and opts.dtype != a.dtype:
        copies.append(f"{a.dtype} -> {opts.dtype} (checked)")
        a = cast_array(a, opts.dtype, path)
    return a, copies


def _bits_as_numpy(c: torch.Tensor, row: DtypeRow) -> np.ndarray[Any, Any]:
    if row.carrier is not None:  # ml_dtypes kinds travel as same-size integers, bit-exact
        return c.view(torch.int16 if row.carrier.itemsize == 2 else torch.uint8).numpy().view(row.numpy)
    return c.numpy()


def _nested_to_numpy(t: torch.Tensor, opts: ToNumpyOptions, path: str) -> Adopted:
    source = describe_tensor(t)
    t = t.detach()
    copies = []
    if t.device.type != "cpu":
        if opts.copy is False:
            _refuse_copy("to_numpy", path, f"the components live on {t.device} and must be copied to the host")
        copies.append(f"copied from {t.device} to the host")
        t = t.cpu()
    parts: list[np.ndarray[Any, Any]] = []
    for i, component in enumerate(t.unbind()):
        a, more = _component_to_numpy(component, opts, f"{path}[{i}]")
        if opts.copy is False and more:
            _refuse_copy("to_numpy", f"{path}[{i}]", "the conversion must copy: " + "; ".join(more))
        copies += [m for m in more if m not in copies]
        parts.append(a)
    if opts.copy is True and not copies:
        parts = [a.copy(order="K") for a in parts]
        copies.append("copy=True asks for fresh memory")
    memory = "; ".join(copies) if copies else "each a view of the tensor's memory"
    why = f"a nested tensor has no single array shape: a list of {len(parts)} arrays, one per component ({memory})"
    return finished(parts, why, copied=bool(copies), source=source)


def _rebuild_nested(t: torch.Tensor, dtype: torch.dtype, path: str) -> torch.Tensor:
    """``t`` with every component cast (checked) to ``dtype``, in the same nested layout."""
    parts = [cast_tensor(c, dtype, f"{path}[{i}]") for i, c in enumerate(t.detach().unbind())]
    with _torch_notices_muted():
        return torch.nested.nested_tensor(parts, layout=t.layout, device=t.device)


# --- to_tensor on special tensors -------------------------------------------------------------


def _keep_special(t: torch.Tensor, opts: ToTensorOptions, path: str, *, copied: bool, why: str) -> Adopted:
    """``to_tensor`` on a quantized or nested tensor: it stays what it is; the options torch can honour apply."""
    kind = "quantized" if t.is_quantized else "nested"
    notes = [why]
    out = t
    if opts.dtype is not None and opts.dtype != t.dtype:
        if t.is_quantized:
            raise UnsupportedError(
                "to_tensor",
                path,
                f"dtype={opts.dtype} asks to cast a quantized ({t.dtype}) tensor: its codes mean something "
                "only with their scale and zero point",
                "Dequantize first (t.dequantize(), or tb.to_numpy(x, quantized='dequantize')), then cast; "
                "or drop dtype= to keep it quantized",
            )
        if opts.copy is False:
            _refuse_copy("to_tensor", path, f"casting to {opts.dtype} makes new components")
        out, copied = _rebuild_nested(out, opts.dtype, path), True
        notes.append(f"each component cast to {str(opts.dtype).removeprefix('torch.')} (checked)")
    if opts.device is not None:
        device = resolve_device(opts.device, path, "to_tensor", _CODES.get(out.dtype, out.dtype))
        if needs_device(device, out.device):
            if opts.copy is False:
                _refuse_copy("to_tensor", path, f"the tensor must be copied from {out.device} to {device}")
            out = _torch_op(out, lambda x: x.to(device), path, f"moving to {device}", "Convert it on the CPU instead")
            copied = True
            notes.append(f"moved to {device} by torch's own .to() (the transfer engine handles plain tensors only)")
    if opts.pin_memory and out.device.type == "cpu":
        if opts.copy is False:
            _refuse_copy("to_tensor", path, "pinning copies into page-locked memory")
        out, copied = (
            _torch_op(out, lambda x: x.pin_memory(), path, "pinning host memory", "Drop pin_memory=True"),
            True,
        )
        notes.append("pinned by torch's own .pin_memory()")
    if opts.copy is True and not copied:
        out, copied = _torch_op(out, lambda x: x.clone(), path, "copying", "Drop copy=True"), True
        notes.append("copy=True asks for fresh memory")
    if opts.requires_grad and not out.requires_grad:
        if t.is_quantized or not (out.is_floating_point() or out.is_complex()):
            raise UnsupportedError(
                "to_tensor",
                path,
                f"requires_grad=True needs a float or complex tensor, not a {kind} {out.dtype} one",
                "Dequantize first (t.dequantize())" if t.is_quantized else "Pass dtype=torch.float32 as well",
            )
        out = out.detach().requires_grad_(True)
        notes.append("a new leaf tensor that requires grad")
    return finished(out, "; ".join(notes), copied=copied, source=describe_tensor(t))


def _torch_op(t: torch.Tensor, op: Any, path: str, doing: str, fix: str) -> torch.Tensor:
    try:
        with _torch_notices_muted():
            out: torch.Tensor = op(t)
            return out
    except (RuntimeError, NotImplementedError) as err:
        raise DeviceError("to_tensor", path, f"{doing} failed ({str(err).rstrip('.')})", fix) from err


# --- the adapter ----------------------------------------------------------------------------


class _Layouts:
    name = "layouts"

    def claims(self, obj: object) -> bool:
        if type(obj) is QuantizedArray:
            return True
        if not isinstance(obj, torch.Tensor):
            return False
        if _is_fake(obj) or _is_dtensor(obj):
            return True
        return not obj.is_meta and (obj.is_quantized or obj.is_nested)

    def to_tensor(self, obj: Any, opts: ToTensorOptions, path: str) -> Adopted:
        if isinstance(obj, QuantizedArray):
            if opts.copy is False:
                _refuse_copy("to_tensor", path, "torch copies the codes to rebuild a quantized tensor")
            why = f"the quantized tensor rebuilt from its codes and parameters ({obj.qscheme}), codes copied"
            return _keep_special(_rebuild(obj, "to_tensor", path), opts, path, copied=True, why=why)
        _refuse_unbacked(obj, "to_tensor", path)
        why = f"a {'quantized' if obj.is_quantized else 'nested'} tensor stays one: returned as it is"
        return _keep_special(obj, opts, path, copied=False, why=why)

    def to_numpy(self, obj: Any, opts: ToNumpyOptions, path: str) -> Adopted:
        if isinstance(obj, QuantizedArray):
            return _quantized_array_to_numpy(obj, opts, path)
        _refuse_unbacked(obj, "to_numpy", path)
        if obj.is_quantized:
            return _quantized_to_numpy(obj, opts, path)
        return _nested_to_numpy(obj, opts, path)


ADAPTER: Final = _Layouts()


# --- building nested tensors ------------------------------------------------------------------


def nested_tensor(
    arrays: Sequence[np.ndarray[Any, Any]],
    *,
    layout: torch.layout = torch.jagged,
    dtype: object = None,
    device: object = None,
) -> torch.Tensor:
    """Build a nested tensor from a list of NumPy arrays, one component each.

    The reverse of ``to_numpy`` on a nested tensor, which gives one array per component:
    nested -> list -> nested is bit-exact (NaN payloads and bfloat16/float8 included). The
    result shares nothing with the arrays: torch copies every component into one buffer.

    Args:
        arrays: the components; all of one dtype (unless ``dtype`` is given) and one ndim.
        layout: ``torch.jagged`` (the default: one ragged dimension, components at least 1-d,
            the layout torch develops) or ``torch.strided`` (any ragged shapes; torch's
            prototype, which lacks some dtypes such as uint16 and float8).
        dtype: cast every component to this dtype (checked: a value that does not fit raises),
            in any spelling ``tb.torch_dtype`` accepts.
        device: where the nested tensor lives (default: the CPU).

    Returns:
        A nested ``torch.Tensor`` with ``len(arrays)`` components.

    Raises:
        UnsupportedError: (TypeError) not a list of arrays, mixed dtypes without ``dtype=``, a
            dtype torch lacks, or one the layout lacks.
        StructureError: (ValueError) no arrays, mixed ndims, or shapes the layout cannot hold.
        ValueRangeError: (ValueError) ``dtype=`` would change a value.
        DeviceError: (RuntimeError) ``device`` does not exist.

    Example:
        >>> import numpy as np
        >>> nt = nested_tensor([np.arange(6.0).reshape(2, 3), np.ones((1, 3))])
        >>> nt.is_nested, [tuple(c.shape) for c in nt.unbind()]
        (True, [(2, 3), (1, 3)])
    """
    what = "nested_tensor"
    bad = _not_an_array(arrays)
    if bad is not None:
        raise UnsupportedError(
            what,
            "arrays",
            f"a list of NumPy arrays is needed, but {bad}",
            "Pass a list of np.ndarray (for tensors, use torch.nested.nested_tensor; masked arrays: a.filled())",
        )
    if not arrays:
        raise StructureError(
            what, "arrays", "no arrays were given", "Pass at least one array (a nested tensor needs a component)"
        )
    if layout not in (torch.jagged, torch.strided):
        raise UnsupportedError(what, "layout", f"{layout} is not a nested layout", "Pass torch.jagged or torch.strided")
    row = _nested_row(arrays, dtype)
    first = arrays[0]
    for i, a in enumerate(arrays):
        if a.ndim != first.ndim:
            raise StructureError(
                what,
                f"arrays[{i}]",
                f"shape {a.shape} is {a.ndim}-d but arrays[0] is {first.ndim}-d ({first.shape}); "
                "components of a nested tensor have one number of dimensions",
                "Reshape them to one ndim first, e.g. a.reshape(-1) or a[None]",
            )
    _check_jagged(arrays, layout)
    dev = _nested_device(device, row)
    parts = [_component_tensor(a, row, f"arrays[{i}]") for i, a in enumerate(arrays)]
    try:
        with _torch_notices_muted():
            return torch.nested.nested_tensor(parts, layout=layout, device=dev)
    except NotImplementedError as err:
        raise UnsupportedError(
            what, "arrays", f"torch's {layout} nested layout lacks {row.name} ({err})", "Pass layout=torch.jagged"
        ) from err
    except RuntimeError as err:
        raise StructureError(
            what, "arrays", f"torch refused the components ({err})", "Pass layout=torch.strided"
        ) from err


def _not_an_array(arrays: object) -> str | None:
    if not isinstance(arrays, (list, tuple)):
        return f"arrays is a {type(arrays).__qualname__}"
    for i, a in enumerate(arrays):
        if not isinstance(a, np.ndarray) or isinstance(a, np.ma.MaskedArray):  # a mask would be lost
            return f"arrays[{i}] is a {type(a).__module__}.{type(a).__qualname__}".replace("builtins.", "")
    return None


def _nested_row(arrays: Sequence[np.ndarray[Any, Any]], dtype: object) -> DtypeRow:
    if dtype is not None:
        wanted = row_for_torch(torch_dtype(dtype))
        if wanted is None or not wanted.exact:
            raise UnsupportedError(
                "nested_tensor",
                "dtype",
                f"{dtype!r} cannot be built from NumPy data",
                "Pass a plain dtype such as 'float32'",
            )
        return wanted
    first = arrays[0].dtype
    for i, a in enumerate(arrays):
        if a.dtype.newbyteorder("=") != first.newbyteorder("="):
            raise UnsupportedError(
                "nested_tensor",
                f"arrays[{i}]",
                f"dtype {a.dtype} differs from arrays[0]'s {first}; torch would cast them silently",
                "Pass dtype= to cast every component (checked), or cast the arrays first",
            )
    row = row_for_numpy(first)
    if row is None:
        raise UnsupportedError(
            "nested_tensor", "arrays[0]", f"dtype {first} has no torch equivalent", "Pass dtype= to cast it (checked)"
        )
    return row


def _check_jagged(arrays: Sequence[np.ndarray[Any, Any]], layout: torch.layout) -> None:
    if layout != torch.jagged:
        return
    first = arrays[0]
    if first.ndim == 0:
        raise StructureError(
            "nested_tensor",
            "arrays",
            "the jagged layout needs components of at least 1 dimension",
            "Pass layout=torch.strided",
        )
    ragged = {d for a in arrays for d in range(a.ndim) if a.shape[d] != first.shape[d]}
    if len(ragged) > 1:
        raise StructureError(
            "nested_tensor",
            "arrays",
            f"the shapes differ in dimensions {sorted(ragged)} ({', '.join(str(a.shape) for a in arrays[:4])}"
            f"{', ...' if len(arrays) > 4 else ''}), "
            "but the jagged layout holds one ragged dimension",
            "Pass layout=torch.strided, which holds any ragged shapes",
        )


def _nested_device(device: object, row: DtypeRow) -> torch.device:
    try:
        dev = torch.device("cpu" if device is None else device)  # type: ignore[call-overload]
    except (RuntimeError, TypeError) as err:
        raise DeviceError(
            "nested_tensor", "device", f"{device!r} is not a device torch knows ({err})", "Pass 'cpu' or 'cuda'"
        ) from err
    return resolve_device(dev, "device", "nested_tensor", row.torch)


def _component_tensor(a: np.ndarray[Any, Any], row: DtypeRow, path: str) -> torch.Tensor:
    """A tensor over ``a`` (a view where torch accepts its layout) in ``row``'s dtype; torch copies it next."""
    if a.dtype != row.numpy:
        a = cast_array(a, row.numpy, path) if a.dtype.newbyteorder("=") != row.numpy else a.astype(row.numpy)
    if min(a.strides, default=0) < 0:
        a = np.ascontiguousarray(a)
    with _torch_notices_muted():  # a read-only array is only read: nested_tensor copies it
        if row.carrier is not None:
            return torch.from_numpy(a.view(row.carrier)).view(row.torch)
        return torch.from_numpy(a)
