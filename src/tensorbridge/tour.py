"""A guided tour: every conversion two NumPy <-> PyTorch tutorials teach, done with tensorbridge.

Each stop prints the tensorbridge call, the result, what plain torch does with the same input,
and whether the result SHARES memory with its input or is a fresh COPY. Sharing is checked on
the memory itself (the byte ranges behind the data pointers) and compared with what
:func:`tensorbridge.explain` predicts; a disagreement prints MISMATCH and fails the tour.

Run it with ``tensorbridge tour`` (``--quiet`` prints nothing).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch

from .api import explain, to_numpy, to_tensor
from .errors import DeviceError

__all__ = ["run_tour"]


def _byte_range(x: Any) -> tuple[int, int] | None:
    """Return the [start, end) addresses of the bytes ``x`` can reach; None when it holds none."""
    if isinstance(x, torch.Tensor):
        if x.numel() == 0:
            return None
        start, item = x.data_ptr(), x.element_size()
        strides = [s * item for s in x.stride()]
        shape = list(x.shape)
    elif isinstance(x, np.ndarray):
        if x.size == 0:
            return None
        start, item = int(x.__array_interface__["data"][0]), x.itemsize
        strides, shape = list(x.strides), list(x.shape)
    else:
        return None
    low = start + sum(s * (n - 1) for s, n in zip(strides, shape, strict=True) if s < 0)
    high = start + sum(s * (n - 1) for s, n in zip(strides, shape, strict=True) if s > 0) + item
    return low, high


def _device(x: Any) -> str:
    return x.device.type if isinstance(x, torch.Tensor) else "cpu"


def _shares(source: Any, result: Any) -> bool:
    """Whether ``result`` overlaps ``source`` in memory, checked on the data pointers."""
    a, b = _byte_range(source), _byte_range(result)
    if a is None or b is None or _device(source) != _device(result):
        return False
    return a[0] < b[1] and b[0] < a[1]


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        grad = ", requires_grad" if x.requires_grad else ""
        return f"torch.Tensor {x.dtype} shape {tuple(x.shape)} on {x.device}{grad}: {x.tolist()}"
    if isinstance(x, np.ndarray):
        return f"numpy.ndarray {x.dtype} shape {x.shape}: {x.tolist()}"
    return repr(x)


def _plain(fn: Callable[[], object]) -> str:
    """Say what plain torch does: raises (first line of the message), warns, or works (and a note)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            note = fn()
        except Exception as err:  # reporting whatever torch raises is the point
            return f"raises {type(err).__name__}: {str(err).splitlines()[0][:110]}"
    if caught:
        return f"warns {caught[0].category.__name__}: {str(caught[0].message)[:110]}"
    return f"works, but {note}" if isinstance(note, str) else "works"


def _readonly_hazard() -> str:
    """Show what ``torch.from_numpy`` does with read-only memory: it shares it, writably."""
    demo = np.zeros(2)
    demo.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch warns once per process, then never again
        torch.from_numpy(demo).add_(1)
    return f"tensor.add_(1) just changed a read-only array to {demo.tolist()}"


class _Tour:
    """Prints the stops (unless quiet) and counts sharing verdicts that disagree."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.failures = 0

    def say(self, text: str = "") -> None:
        if not self.quiet:
            print(text)

    def stop(
        self,
        title: str,
        name: str,
        source: Any,
        to: Literal["tensor", "numpy"],
        plain: Callable[[], object] | None = None,
        **options: Any,
    ) -> Any:
        """Convert ``source`` with tensorbridge, check memory sharing against explain(), report."""
        args = "".join(f", {k}={v!r}" for k, v in options.items())
        result = (to_tensor if to == "tensor" else to_numpy)(source, **options)
        predicted = explain(source, to=to, **options)
        shared = _shares(source, result)
        self.say(f"\n== {title}")
        self.say(f"   tb.to_{to}({name}{args})")
        self.say(f"   -> {_describe(result)}")
        if plain is not None:
            self.say(f"   plain torch {_plain(plain)}")
        checked, said = ("SHARED" if s else "COPIED" for s in (shared, predicted.shares_memory))
        self.say(f"   memory: {checked} (checked on the data pointers); explain() says {said}")
        for line in str(predicted).splitlines()[1:]:
            self.say(f"     {line.strip()}")
        if shared != predicted.shares_memory:
            self.failures += 1
            self.say(f"   !!! MISMATCH: the memory is {checked} but explain() says {said} !!!")
        return result


def _gpu(tour: _Tour) -> None:
    """The tutorials' GPU conversions, or on a machine without CUDA, the error they raise."""
    eye = np.eye(3)
    if torch.cuda.is_available():
        on_gpu = tour.stop("NumPy -> GPU tensor (torch.from_numpy(x).to('cuda'))", "x", eye, "tensor", device="cuda")
        tour.stop("GPU tensor -> NumPy (x.to('cpu').numpy())", "x_gpu", on_gpu, "numpy", plain=lambda: on_gpu.numpy())
        grad = torch.tensor([1, 2, 3, 4, 5], dtype=torch.float32, requires_grad=True).cuda()
        tour.stop(
            "GPU tensor with grad -> NumPy (tensor.detach().cpu().numpy())",
            "tensor",
            grad,
            "numpy",
            plain=lambda: grad.detach().numpy(),
        )
        return
    tour.say("\n== GPU examples: skipped, CUDA is not available on this machine")
    tour.say("   tb.to_tensor(x, device='cuda')")
    try:
        to_tensor(eye, device="cuda")
    except DeviceError as err:
        tour.say(f"   -> raises DeviceError (a RuntimeError): {err}")
    else:
        tour.failures += 1
        tour.say("   !!! MISMATCH: expected a DeviceError without CUDA, but the conversion succeeded !!!")


def run_tour(quiet: bool = False) -> int:
    """Walk through every conversion the two tutorials teach, done with tensorbridge.

    Args:
        quiet: print nothing, only return the status.

    Returns:
        0 when every checked memory verdict agrees with :func:`tensorbridge.explain`, else 1.

    Example:
        >>> run_tour(quiet=True)
        0
    """
    tour = _Tour(quiet)
    tour.say("tensorbridge tour: NumPy <-> PyTorch, as the tutorials teach it")
    np_array = np.array([5, 7, 1, 2, 4, 4])
    tour.say(f"\nnp_array = np.array([5, 7, 1, 2, 4, 4])  # dtype {np_array.dtype} here (platform-dependent)")
    tensor_a = tour.stop("NumPy -> tensor, keeping the dtype (torch.from_numpy)", "np_array", np_array, "tensor")
    tour.stop("NumPy -> float32 tensor (torch.Tensor(np_array))", "np_array", np_array, "tensor", dtype=torch.float32)
    tour.stop(
        "NumPy -> tensor of a chosen dtype (torch.tensor(np_array, dtype=torch.int32); from_numpy takes no dtype)",
        "np_array",
        np_array,
        "tensor",
        plain=lambda: torch.from_numpy(np_array, dtype=torch.int32),  # type: ignore[call-arg]
        dtype=torch.int32,
    )
    tour.stop("Cast after creation (tensor_a.float())", "tensor_a", tensor_a, "tensor", dtype=torch.float32)
    tensor = torch.tensor([1, 2, 3, 4, 5])
    tour.stop("CPU tensor -> NumPy (tensor.numpy())", "tensor", tensor, "numpy")
    grad = torch.tensor([1, 2, 3, 4, 5], dtype=torch.float32, requires_grad=True)
    tour.stop(
        "Tensor that requires grad -> NumPy, no detach() needed", "tensor", grad, "numpy", plain=lambda: grad.numpy()
    )
    _gpu(tour)
    x = np.eye(3)
    tour.stop("np.eye(3) -> tensor (torch.from_numpy(x))", "x", x, "tensor")
    tour.stop("... as float32 (torch.from_numpy(x).type(torch.float32))", "x", x, "tensor", dtype=torch.float32)
    eye = torch.eye(3)
    tour.stop("torch.eye(3) -> NumPy (x.numpy())", "x", eye, "numpy")
    weight = torch.nn.Parameter(torch.eye(3))
    tour.stop(
        "Parameter -> NumPy (x.detach().to('cpu').numpy(), one call)",
        "weight",
        weight,
        "numpy",
        plain=lambda: weight.numpy(),
    )
    tour.say("\n-- Inputs plain torch gets wrong, and tensorbridge does not --")
    frozen = np.arange(6.0).reshape(2, 3)
    frozen.flags.writeable = False
    tour.stop(
        "Read-only array -> tensor (copied, so writes cannot reach read-only memory)",
        "frozen",
        frozen,
        "tensor",
        plain=_readonly_hazard,
    )
    tour.stop("Read-only array -> tensor, sharing on request", "frozen", frozen, "tensor", copy=False)
    img = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    tour.stop(
        "Negative strides: BGR -> RGB view img[:, :, ::-1]",
        "img[:, :, ::-1]",
        img[:, :, ::-1],
        "tensor",
        plain=lambda: torch.from_numpy(img[:, :, ::-1]),
    )
    half = torch.tensor([1.5, -2.0, 3.25], dtype=torch.bfloat16)
    tour.stop(
        "bfloat16 tensor -> NumPy (an ml_dtypes array, zero-copy)", "half", half, "numpy", plain=lambda: half.numpy()
    )
    if tour.failures:
        tour.say(f"\nFAILED: {tour.failures} MISMATCH(es) between checked memory and explain()")
        return 1
    tour.say("\nAll conversions done; every memory verdict agrees with explain().")
    return 0
