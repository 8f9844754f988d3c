"""The collective check of ``ominix train check-hosts``: one torchrun per node over SSH (the launch's
own path: ``multinode.node_command`` and ``run_nodes``), each running this module as its worker.

What is measured, in the bus bandwidth convention of nccl-tests (an all_reduce of S bytes over n
ranks moves 2 (n - 1) / n x S through each rank's link, divided by the time):

- ``all``: an all_reduce over every rank, at a few sizes: what a training step's gradient reduction
  sees. Every rank of a ring waits for the slowest link, so it cannot say which node is slow;
- ``link``: node by node, rank 0 of each node and of the next node (in a ring) reduce between
  themselves; a node's link bandwidth is the better of its two pairs, so a slow node is the one
  whose both pairs are slow (with two nodes there is one pair, which names neither);
- ``local``: the ranks of each node among themselves (with more than one process per node).

NCCL on GPUs, gloo on CPUs. Rank 0 prints the result as one line starting with :data:`TAG`.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ominix import console
from ominix.errors import OminixError
from ominix.launch import hostcheck
from ominix.launch.command import remote_python, torchrun_argv
from ominix.launch.events import Events

if TYPE_CHECKING:
    from ominix.config import OminixConfig
    from ominix.launch.ssh import Target

TAG = "ominix-bandwidth: "
GPU_SIZES = (1 << 20, 16 << 20, 128 << 20)  # bytes of each all_reduce
CPU_SIZES = (1 << 16, 1 << 20, 4 << 20)  # gloo on loopback: enough to time, quick to run
LINK_SIZE_INDEX = -1  # the pairs and the node groups are timed at the largest size
ITERATIONS = 5
SLOW = 0.5  # a node whose link bandwidth is below this fraction of the best node's is named slow


def _timed(tensor, group, device) -> float:
    """Seconds of one all_reduce of ``tensor`` over ``group``, the best of ITERATIONS after a warm-up."""
    import torch
    import torch.distributed as dist

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    dist.all_reduce(tensor, group=group)
    best = float("inf")
    for _ in range(ITERATIONS):
        sync()
        began = time.perf_counter()
        dist.all_reduce(tensor, group=group)
        sync()
        best = min(best, time.perf_counter() - began)
    return best


def _bus_gbps(size: int, ranks: int, seconds: float) -> float:
    return size * 2 * (ranks - 1) / ranks / seconds / 1e9


def measure() -> dict[str, Any] | None:
    """Run the measurements on this rank (inside torchrun); the result on rank 0, else None."""
    import torch
    import torch.distributed as dist

    gpu = torch.cuda.is_available()
    if gpu:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if gpu else "gloo")
    device = torch.device("cuda", torch.cuda.current_device()) if gpu else torch.device("cpu")
    world, rank = dist.get_world_size(), dist.get_rank()
    per_node, nodes = int(os.environ["LOCAL_WORLD_SIZE"]), world // int(os.environ["LOCAL_WORLD_SIZE"])
    node = rank // per_node
    sizes = GPU_SIZES if gpu else CPU_SIZES
    result: dict[str, Any] = {"backend": dist.get_backend(), "world": world, "nodes": nodes, "all": []}
    for size in sizes:
        seconds = _timed(torch.ones(size // 4, device=device), None, device)
        result["all"].append({"bytes": size, "seconds": seconds, "bus_gbps": _bus_gbps(size, world, seconds)})
    big = torch.ones(sizes[LINK_SIZE_INDEX] // 4, device=device)
    link: dict[int, list[float]] = {n: [] for n in range(nodes)}
    pairs = sorted({tuple(sorted((n, (n + 1) % nodes))) for n in range(nodes)} if nodes > 1 else set())
    for a, b in pairs:  # every rank builds every group, in the same order (new_group is collective)
        group = dist.new_group([a * per_node, b * per_node])
        if node in (a, b) and rank % per_node == 0:
            seconds = _timed(big, group, device)
            for n in (a, b):
                link[n].append(_bus_gbps(big.numel() * 4, 2, seconds))
        dist.barrier()
    local = None
    if per_node > 1:
        groups = [dist.new_group(list(range(n * per_node, (n + 1) * per_node))) for n in range(nodes)]
        local = _bus_gbps(big.numel() * 4, per_node, _timed(big, groups[node], device))
    mine = {"node": node, "host": socket.gethostname(), "link_gbps": max(link[node], default=None),
            "local_gbps": local}
    every = [None] * world
    dist.all_gather_object(every, mine)
    dist.destroy_process_group()
    if rank != 0:
        return None
    result["per_node"] = [every[n * per_node] for n in range(nodes)]
    return result


def slowest(result: dict[str, Any]) -> dict[str, Any] | None:
    """The node whose link bandwidth is below SLOW x the best node's (the lowest such), else None.
    Two nodes share their only pair: neither can be told from the other."""
    links = [n for n in result["per_node"] if n["link_gbps"] is not None]
    if len(links) < 3:
        return None
    low = min(links, key=lambda n: n["link_gbps"])
    return low if low["link_gbps"] < SLOW * max(n["link_gbps"] for n in links) else None


def run_check(cfg: OminixConfig, targets: list[Target], master: tuple[str, int], gpus: list[int]) -> dict[str, Any]:
    """Start the collective on every node (the launch's path and process count, from each node's
    ``gpus``; logs in a temporary directory kept when a node fails) and return rank 0's result,
    with ``slowest``. A node that fails or cannot join raises ``multinode.NodeFailed`` naming it."""
    from ominix.launch import multinode

    nproc = multinode.nproc_per_node(cfg, targets, gpus)
    logs = Path(tempfile.mkdtemp(prefix="ominix-check-hosts-"))
    lines: list[str] = []
    events = Events(line=lines.append)  # the nodes' output is parsed, not shown
    nodes = [multinode.node_command(cfg, rank, t, torchrun_argv(
        remote_python(cfg), len(targets), rank, nproc, master[0], master[1], cfg.launch.rdzv_timeout,
        "", worker=["-m", "ominix.launch.bandwidth"])) for rank, t in enumerate(targets)]
    code = multinode.run_nodes(cfg, nodes, logs, events)
    if code != 0:
        raise OminixError("interrupted during the collective check", "run `ominix train check-hosts` again",
                          exit_code=code)
    found = [line.split(TAG, 1)[1] for line in lines if TAG in line]
    if not found:
        raise OminixError("the collective check printed no result", f"see the node logs in {logs}", exit_code=1)
    for log in logs.iterdir():
        log.unlink()
    logs.rmdir()
    result = json.loads(found[-1])
    for node, target in zip(result["per_node"], targets):
        node["target"] = target.label
    result["slowest"] = slowest(result)
    return result


def check_cluster(cfg: OminixConfig, nodes: int | None, collective: bool,
                  show: Callable[[dict[str, Any], list[hostcheck.HostReport]], None]
                  ) -> tuple[dict[str, Any], list[hostcheck.HostReport], dict[str, Any] | None]:
    """The checks of ``ominix train check-hosts``: every host's over SSH (handed to ``show`` at
    once), then, when they all pass and ``collective``, the all_reduce across the nodes
    (None otherwise)."""
    targets, master = hostcheck.cluster(cfg, nodes)
    here, reports = hostcheck.check_hosts(cfg, targets, master)
    show(here, reports)
    if not collective or not all(r.ok for r in reports):
        return here, reports, None
    return here, reports, run_check(cfg, targets, master, [r.gpus for r in reports])


def main() -> None:
    result = measure()
    if result is not None:
        console.out(TAG + json.dumps(result))


if __name__ == "__main__":
    main()
