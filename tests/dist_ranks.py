"""Scenarios run on N gloo ranks on 127.0.0.1, spawned by test_distributed.py in a subprocess.

``python dist_ranks.py SCENARIO NPROCS OUTDIR [TIMEOUT_S]``: every rank runs ``SCENARIO`` and
writes ``OUTDIR/rank<r>.json``: ``{"ok": true, "checks": [...]}`` or ``{"ok": false, "error": ...}``.
Each check a rank makes is an assertion here, named in ``checks`` so the test can see it ran.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

import tensorbridge as tb


def _rss_peak_reset() -> int:
    """Reset the peak RSS counter (Linux); return the current RSS in bytes."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status("VmRSS")


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _bytes(a: Any) -> np.ndarray[Any, Any]:
    """The bytes of an array or tensor, to compare bit for bit (bfloat16, bool and 0-d too)."""
    if isinstance(a, torch.Tensor):
        a = tb.to_numpy(a.detach().cpu())
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def _catch(fn: Callable[[], Any]) -> tuple[str, str]:
    """Run ``fn``; return (error class name, message), or ("", "") when it returned."""
    try:
        fn()
    except Exception as err:
        return type(err).__name__, str(err)
    return "", ""


# --- the placement matrix --------------------------------------------------------------------


def _cases(world: int) -> dict[str, Any]:
    """name -> DTensor, every one with the same values on every rank (seeded)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor
    from torch.distributed.tensor.placement_types import _StridedShard

    g = torch.Generator().manual_seed(0)
    full = torch.randn(9, 6, generator=g)
    mesh = init_device_mesh("cpu", (world,))
    out: dict[str, Any] = {
        "shard0": distribute_tensor(full, mesh, [Shard(0)]),
        "shard1": distribute_tensor(full, mesh, [Shard(1)]),
        "uneven": distribute_tensor(torch.arange(world + 1, dtype=torch.int64), mesh, [Shard(0)]),
        "empty_shard": distribute_tensor(torch.arange(world - 1, dtype=torch.int32), mesh, [Shard(0)]),
        "replicate": distribute_tensor(full.to(torch.bfloat16), mesh, [Replicate()]),
        "bf16": distribute_tensor(full.to(torch.bfloat16), mesh, [Shard(0)]),
        "bool": distribute_tensor(full > 0, mesh, [Shard(1)]),
        "scalar": distribute_tensor(torch.tensor(3.5), mesh, [Replicate()]),
        "partial": DTensor.from_local(torch.full((2, 3), float(dist.get_rank() + 1)), mesh, [Partial()]),
    }
    if world == 4:
        mesh2 = init_device_mesh("cpu", (2, 2))
        out["mesh2_s0s1"] = distribute_tensor(full, mesh2, [Shard(0), Shard(1)])
        out["mesh2_rs0"] = distribute_tensor(full, mesh2, [Replicate(), Shard(0)])
        out["mesh2_s0s0"] = distribute_tensor(full, mesh2, [Shard(0), Shard(0)])
        part = torch.full((9, 3), float(dist.get_rank() + 1))
        out["mesh2_s1p"] = DTensor.from_local(part, mesh2, [Shard(1), Partial()], shape=(9, 6), stride=(6, 1))
        out["strided"] = distribute_tensor(full[:8], mesh2, [_StridedShard(0, split_factor=2), Shard(0)])
    return out


def matrix(rank: int, world: int, outdir: str) -> list[str]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Replicate, Shard

    checks: list[str] = []
    cases = _cases(world)
    want = {k: v.full_tensor() for k, v in cases.items()}
    data = {"params": cases, "step": 7, "plain": torch.arange(3)}

    # gather onto rank 0: the full arrays there, None elsewhere; other leaves convert on every rank
    out = tb.to_numpy(data, shards="gather", dst=0)
    assert out["step"] == 7 and out["plain"].tolist() == [0, 1, 2]
    for k, v in out["params"].items():
        if rank == 0:
            assert isinstance(v, np.ndarray), k
            assert v.dtype == tb.to_numpy(want[k]).dtype and v.shape == tuple(want[k].shape), k
            assert np.array_equal(_bytes(v), _bytes(want[k])), k
        else:
            assert v is None, k
    tied = tb.to_numpy({"a": cases["shard0"], "b": cases["shard0"]}, shards="gather", dst=0)
    assert rank != 0 or tied["a"] is tied["b"], "one DTensor under two keys became two arrays"
    checks.append("gather dst=0")

    # gather onto the last rank, and onto every rank
    last = tb.to_numpy(cases, shards="gather", dst=world - 1)
    assert all((v is not None) == (rank == world - 1) for v in last.values())
    every = tb.to_numpy(cases, shards="gather", dst=None)
    for k, v in every.items():
        assert np.array_equal(_bytes(v), _bytes(want[k])), k
    cast = tb.to_numpy(cases, shards="gather", dst=None, dtype={torch.bfloat16: np.float32})
    assert cast["bf16"].dtype == np.float32 and cast["shard0"].dtype == np.float32
    assert np.array_equal(cast["bf16"], want["bf16"].float().numpy())
    kind, msg = _catch(lambda: tb.to_numpy(cases, shards="gather", dtype={torch.int64: np.uint8}, dst=0))
    if rank == 0:  # the cast runs where the array arrives, and names the leaf
        assert kind == "" or (kind == "ValueRangeError" and "['uneven']" in msg), (kind, msg)
    checks.append("gather dst=last, dst=None")

    # local: the shard itself, zero-copy; explain says where it lies
    local = tb.to_numpy(cases["shard0"], shards="local")
    mine = cases["shard0"].to_local()
    assert local.shape == tuple(mine.shape)
    assert mine.numel() == 0 or np.shares_memory(local, mine.numpy()), "shards='local' copied"
    plan = str(tb.explain(cases["shard0"], to="numpy", shards="local"))
    offset = -(-9 // world) * rank
    assert f"offsets ({min(offset, 9)}, 0)" in plan, plan
    checks.append("local zero-copy, explain offsets")

    # the default refuses and names the choices
    kind, msg = _catch(lambda: tb.to_numpy(cases["shard0"]))
    assert kind == "UnsupportedError" and "shards='gather'" in msg and "shards='local'" in msg, msg
    checks.append("default refuses")

    # a key on one rank only: StructureError on every rank, and the group still works
    odd = dict(cases)
    if rank == 1:
        odd["only_here"] = cases["shard0"]
    kind, msg = _catch(lambda: tb.to_numpy(odd, shards="gather"))
    assert kind == "StructureError" and "only_here" in msg, (kind, msg)
    checks.append("mismatched keys raise everywhere")

    # different calls meet in the same first exchange: every rank raises, none waits
    kind, msg = _catch(lambda: tb.to_numpy(cases, shards="gather", dst=rank % 2))
    assert kind == "StructureError" and "different calls" in msg, (kind, msg)
    saving = os.path.join(outdir, "never.safetensors")
    kind, msg = _catch(lambda: tb.save(cases, saving, shards="gather") if rank else tb.to_numpy(cases, shards="gather"))
    assert kind == "StructureError" and "different calls" in msg and not os.path.exists(saving), (kind, msg)
    kind, msg = _catch(lambda: tb.to_numpy(cases, shards="gather", dst=world))
    assert kind == "StructureError" and f"dst={world} names no rank" in msg, (kind, msg)
    checks.append("different calls raise everywhere")

    # uneven from_local without shape=: each rank sees another global shape
    mesh = init_device_mesh("cpu", (world,))
    ragged = DTensor.from_local(torch.ones(rank + 1, 2), mesh, [Shard(0)])
    kind, msg = _catch(lambda: tb.to_numpy({"r": ragged}, shards="gather"))
    assert kind == "StructureError" and "global shape" in msg, (kind, msg)
    checks.append("ragged from_local raises everywhere")

    # scatter from rank 0, and every rank slicing its own copy
    g = torch.Generator().manual_seed(1)
    arrays = {"w": torch.randn(11, 4, generator=g).numpy(), "b": np.arange(5, dtype=np.int32), "n": "name"}
    bf = tb.to_numpy(torch.randn(6, 3, generator=g).to(torch.bfloat16))
    arrays["h"] = bf
    given = arrays if rank == 0 else None
    made = tb.to_tensor(given, mesh=mesh, placements=[Shard(0)], src=0)
    assert made["n"] == "name"
    for k in ("w", "b", "h"):
        assert isinstance(made[k], DTensor), k
        full = made[k].full_tensor()
        assert np.array_equal(_bytes(full), _bytes(arrays[k])), k
        size = -(-arrays[k].shape[0] // world)
        start = min(size * rank, arrays[k].shape[0])
        assert made[k].to_local().shape[0] == min(arrays[k].shape[0], start + size) - start, k
    same = tb.to_tensor(arrays, mesh=mesh, placements=[Shard(0)], src=None)
    for k in ("w", "b", "h"):
        assert torch.equal(same[k].to_local(), made[k].to_local()), k
        assert not np.shares_memory(same[k].to_local().view(torch.uint8).numpy(), arrays[k].view(np.uint8)), k
    rep = tb.to_tensor(given, mesh=mesh, src=0, dtype={np.float32: torch.float64})
    assert rep["w"].placements == (Replicate(),) and rep["w"].dtype == torch.float64
    assert np.array_equal(tb.to_numpy(rep["w"].to_local()), arrays["w"].astype(np.float64))
    checks.append("scatter src=0, src=None, dtype map")

    # an argument only one rank gets wrong: told to the others, every rank raises
    kind, msg = _catch(lambda: tb.to_tensor(given, mesh=mesh, placements=[Shard(0)], copy=False if rank == 1 else None))
    assert kind == "UnsupportedError" and "copy" in msg and (rank == 1 or "rank 1 cannot take part" in msg), msg
    kind, msg = _catch(lambda: tb.to_tensor(given, mesh=mesh, src=world))
    assert kind == "StructureError" and "names no rank" in msg, (kind, msg)
    unpicklable = {"w": arrays["w"], "f": lambda: 0} if rank == 0 else None
    kind, msg = _catch(lambda: tb.to_tensor(unpicklable, mesh=mesh, src=0))
    assert kind == "UnsupportedError" and "cannot be sent" in msg, (kind, msg)
    # values are checked where they are converted, on src: the others are told, not left waiting
    for bad_leaf, kind_on_src in (
        (np.array([1.0, 300.0]), "ValueRangeError"),
        (np.ma.masked_array([1.0, 2.0], mask=[0, 1]), "UnsupportedError"),
    ):
        start = time.monotonic()
        sent = {"ok": np.ones(4, np.float32), "bad": bad_leaf} if rank == 0 else None
        kind, msg = _catch(lambda sent=sent: tb.to_tensor(sent, mesh=mesh, src=0, dtype={np.float64: torch.uint8}))
        assert time.monotonic() - start < 10, "a rank waited for data that did not come"
        expected = kind_on_src if rank == 0 else "DistributedError"
        assert kind == expected and "data['bad']" in msg, (kind, msg)
    checks.append("one rank's bad argument raises everywhere")

    # placements that do not fit, refused on every rank before anything moves
    from torch.distributed.tensor import Partial

    for bad, words in (([Partial()], "pending sum"), ([Shard(2)], "dimension"), ([Shard(0), Shard(0)], "placement")):
        kind, msg = _catch(lambda bad=bad: tb.to_tensor(given, mesh=mesh, placements=bad, src=0))
        assert kind == "UnsupportedError" and words in msg, (bad, kind, msg)
    checks.append("bad placements refused")

    # memory: scattering a 48 MiB array, a receiving rank rises by about its shard, not the whole
    big = np.ones((12 * 1024 * 1024,), dtype=np.float32) if rank == 0 else None
    before = _rss_peak_reset()
    held = tb.to_tensor(big, mesh=mesh, placements=[Shard(0)], src=0)
    rise = _status("VmHWM") - before
    shard = held.to_local().nbytes
    if rank != 0:
        assert rise < 1.5 * shard, (rise, shard)
    checks.append(f"scatter memory rise {rise / 2**20:.1f} MiB for a {shard / 2**20:.1f} MiB shard")
    del held, big
    # src=None from a memory map: each rank's anonymous memory grows by its shard, not the file
    mapped = os.path.join(outdir, "mapped.npy")
    if rank == 0:
        np.save(mapped, np.arange(8 * 1024 * 1024, dtype=np.float32))
    dist.barrier()
    arr = np.load(mapped, mmap_mode="r")
    before = _status("RssAnon")
    held = tb.to_tensor({"a": arr}, mesh=mesh, placements=[Shard(0)], src=None)
    grown = _status("RssAnon") - before
    shard = held["a"].to_local().nbytes
    assert grown < shard + 4 * 2**20, (grown, shard)
    assert np.array_equal(held["a"].to_local().numpy(), arr[rank * arr.size // world : (rank + 1) * arr.size // world])
    checks.append(
        f"src=None from a memory map: anonymous memory +{grown / 2**20:.1f} MiB for a {shard / 2**20:.1f} MiB shard"
    )
    del held, arr

    if world == 4:  # tensor parallel inside each of two replicas: DTensors on sub-meshes [0, 1] and [2, 3]
        tp = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))["tp"]
        full = torch.arange(30.0).reshape(5, 6)
        from torch.distributed.tensor import distribute_tensor

        sub = {"w": distribute_tensor(full, tp, [Shard(1)]), "b": distribute_tensor(full[0], tp, [Shard(0)])}
        for d in (0, 3, None):
            got = tb.to_numpy(sub, shards="gather", dst=d)
            if d is None or rank == d:
                assert np.array_equal(got["w"], full.numpy()) and np.array_equal(got["b"], full[0].numpy())
        made = tb.to_tensor({"w": full.numpy()} if rank == 0 else None, mesh=tp, placements=[Shard(0)], src=0)
        assert torch.equal(made["w"].full_tensor(), full), rank
        checks.append("sub-mesh replicas gather and scatter")

    # save: one file, and a sharded set, written by rank 0 from every rank's shards
    path = os.path.join(outdir, "gathered.safetensors")
    assert tb.save(cases, path, shards="gather", dst=0) is None
    if rank == 0:
        back = tb.load(path, to="tensor")
        for k in cases:
            assert np.array_equal(_bytes(back[k]), _bytes(want[k])), k
    setdir = os.path.join(outdir, "gathered_set")
    tb.save(cases, setdir, shards="gather", dst=0, max_shard_size=200)
    if rank == 0:
        back = tb.load(setdir, to="tensor")
        assert len(os.listdir(setdir)) > 2
        for k in cases:
            assert np.array_equal(_bytes(back[k]), _bytes(want[k])), k
    checks.append("save file and set")

    # save onto an existing file: rank 0 cannot take part, and every rank raises at once
    kind, msg = _catch(lambda: tb.save(cases, path, shards="gather", dst=0))
    assert kind == "StructureError" and "exists" in msg, (kind, msg)
    assert rank == 0 or "rank 0 cannot take part" in msg, msg
    checks.append("save refused everywhere")
    dist.barrier()
    return checks


def fsdp(rank: int, world: int, outdir: str) -> list[str]:
    """An FSDP2 model: tb.save to a file and a set; torch's recipe to compare with (test_distributed diffs)."""
    import safetensors.torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(13, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3, bias=False))
    model = model.to(torch.bfloat16)
    mesh = init_device_mesh("cpu", (world,))
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    sd = model.state_dict()
    tb.save(sd, os.path.join(outdir, "tb.safetensors"), shards="gather", dst=0)
    tb.save(sd, os.path.join(outdir, "tb_set"), shards="gather", dst=0, max_shard_size="100B")
    import torch.distributed.checkpoint as dcp

    dcp.save(sd, checkpoint_id=os.path.join(outdir, "dcp"))  # for the command to convert
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        safetensors.torch.save_file(
            {k: v.contiguous() for k, v in full.items()}, os.path.join(outdir, "torch.safetensors")
        )
    dist.barrier()
    return ["fsdp2 saved"]


def one_calls(rank: int, world: int, outdir: str) -> list[str]:
    """Only rank 1 calls: it must raise DistributedError within the group's timeout, not hang."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    d = distribute_tensor(torch.arange(8.0), mesh, [Shard(0)])
    if rank == 1:
        start = time.monotonic()
        kind, msg = _catch(lambda: tb.to_numpy({"d": d}, shards="gather"))
        took = time.monotonic() - start
        assert kind == "DistributedError", (kind, msg)
        return [f"raised after {took:.1f} s", msg]
    time.sleep(8)  # rank 0 never calls
    return ["did not call"]


SCENARIOS: dict[str, Callable[[int, int, str], list[str]]] = {"matrix": matrix, "fsdp": fsdp, "one_calls": one_calls}


def work(rank: int, scenario: str, world: int, outdir: str, port: int, timeout: float) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout))
    result: dict[str, Any]
    try:
        result = {"ok": True, "checks": SCENARIOS[scenario](rank, world, outdir)}
    except BaseException:
        result = {"ok": False, "error": traceback.format_exc()}
    with open(os.path.join(outdir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    os._exit(0)  # a timed-out group cannot always be destroyed cleanly; the result is written


if __name__ == "__main__":
    name, nprocs, folder = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    limit = float(sys.argv[4]) if len(sys.argv) > 4 else 60.0
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    free = s.getsockname()[1]
    s.close()
    mp.spawn(work, args=(name, nprocs, folder, free, limit), nprocs=nprocs, join=True)
