"""torch.distributed, as the rest of this package uses it: who we are, and collectives that fail in words.

Every call that waits on other ranks goes through :func:`waiting`, which turns the backend's
timeout or failure into a :class:`~tensorbridge.errors.DistributedError` naming what this rank
was waiting for and what to do. Data moves as bytes (a ``uint8`` view), so every dtype torch
has (bfloat16, float8, bool, complex) travels bit-exact over every backend.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Final

import torch
import torch.distributed as dist

from ..errors import DistributedError, UnsupportedError

__all__ = ["ABORT", "DONE", "OK", "comm_device", "rank_and_world", "recv_into", "send_from", "waiting"]

#: Control words: in place of a leaf's index (``gather.py``), or before a leaf's data (``scatter.py``).
OK: Final = 0
DONE: Final = -1
ABORT: Final = -2


def rank_and_world(what: str, path: str) -> tuple[int, int]:
    """This process's global rank and the world size; raise when no process group is set up."""
    if not (dist.is_available() and dist.is_initialized()):
        raise UnsupportedError(
            what,
            path,
            "sharded data needs the default process group, and torch.distributed is not initialized here",
            "Call torch.distributed.init_process_group(...) on every rank first (torchrun sets up what it needs)",
        )
    return dist.get_rank(), dist.get_world_size()


def comm_device() -> torch.device:
    """Where buffers must live for the default group's backend: CUDA for NCCL, the host otherwise."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@contextlib.contextmanager
def waiting(what: str, path: str, doing: str) -> Iterator[None]:
    """Turn a collective's failure or timeout into a DistributedError that says what was awaited."""
    try:
        yield
    except (RuntimeError, ConnectionError) as err:
        if isinstance(err, DistributedError):
            raise
        detail = " ".join(str(err).split())[:300]
        verb = _VERBS.get(what, what)
        raise DistributedError(
            what,
            path,
            f"rank {dist.get_rank()} gave up {doing} ({type(err).__name__}: {detail})",
            f"Call {verb} with the same data and options on every rank of the group; the process group may "
            "be unusable after this, so destroy it and set it up again",
        ) from err


#: The function a caller called, for each ``what`` of the messages.
_VERBS: Final = {"saving": "tensorbridge.save"}


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8)


def send_from(t: torch.Tensor, to: int) -> None:
    """Send a tensor's bytes to rank ``to`` (copied to the backend's device and made contiguous first)."""
    dev = comm_device()
    dist.send(_as_bytes(t.detach().to(dev).contiguous()), to)


def recv_into(out: torch.Tensor, frm: int) -> None:
    """Receive rank ``frm``'s bytes into ``out`` (through a buffer when ``out`` cannot take them directly)."""
    dev = comm_device()
    if out.is_contiguous() and out.device == dev:
        dist.recv(_as_bytes(out), frm)
        return
    buf = torch.empty(out.shape, dtype=out.dtype, device=dev)
    dist.recv(_as_bytes(buf), frm)
    out.copy_(buf)


def send_word(word: int, to: int) -> None:
    """Send one int64 control word."""
    dist.send(torch.tensor([word], dtype=torch.int64, device=comm_device()), to)


def recv_word(frm: int) -> int:
    """Receive one int64 control word."""
    buf = torch.empty(1, dtype=torch.int64, device=comm_device())
    dist.recv(buf, frm)
    return int(buf.item())
