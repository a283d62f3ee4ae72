"""Writes a DCP checkpoint from two gloo ranks on 127.0.0.1 (run by test_io_dcp.py in a subprocess)."""

from __future__ import annotations

import datetime
import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp


def work(rank: int, folder: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))
    try:
        from torch.distributed.tensor import DeviceMesh, Shard, distribute_tensor

        mesh = DeviceMesh("cpu", [0, 1])
        full = torch.arange(24, dtype=torch.float32).reshape(4, 6)
        dt = distribute_tensor(full, mesh, [Shard(0)])
        dcp.save({"model": {"w": dt, "b": torch.ones(3, dtype=torch.bfloat16)}}, checkpoint_id=folder)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    mp.spawn(work, args=(sys.argv[1], port), nprocs=2, join=True)
