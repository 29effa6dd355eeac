"""Multi-process runs under ``torchrun``: process-group setup, gradient averaging, ordered score gathering.

``torchrun --nproc_per_node N mfx compare|train|evaluate ...`` sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`init_from_env` turns them into a
process group (NCCL on GPUs, Gloo on CPUs) and the :class:`FitContext` carries
``rank``/``world_size``, so ``ctx.loader`` shards data with a
``DistributedSampler``. Three rules keep a distributed run equal to a single
process:

* a detector that declares :class:`~medforensics_core.contract.SupportsDistributed`
  trains on its shard: the shared epoch loop wraps the trained module in
  ``DistributedDataParallel`` (:func:`wrap_module`, through ``ctx.parallel``), which
  averages gradients in ``backward``, so every rank steps with the gradient of the
  whole global batch; frozen features are encoded once per shard and gathered
  (:func:`gather_tensor_rows`). Any other detector trains on the whole set on
  every rank (identical, seeded runs);
* after ``fit``, rank 0 saves the checkpoint and the other ranks load it, so
  every rank scores with one and the same model (this also covers detectors
  whose fit is not gradient based, e.g. a scikit-learn probe);
* scores are gathered back into the original image order (the sampler pads the
  last shard with repeated images; repeats are dropped), and only rank 0 writes
  reports.
"""

from __future__ import annotations

import datetime
import logging
import os

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


def launched_by_torchrun() -> bool:
    """True when the torchrun environment variables describe more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_from_env(device: torch.device) -> tuple[int, int, torch.device]:
    """Join the torchrun process group; returns ``(rank, world_size, device of this rank)``.

    A single process (no torchrun) returns ``(0, 1, device)`` untouched.
    """
    if not launched_by_torchrun():
        return 0, 1, device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
        log.info("joined process group: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return dist.get_rank(), dist.get_world_size(), device


def shutdown() -> None:
    """Leave the process group (safe to call when none was created)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active(world_size: int) -> bool:
    return world_size > 1 and dist.is_available() and dist.is_initialized()


def barrier(world_size: int) -> None:
    if active(world_size):
        dist.barrier()


def broadcast_object(obj, world_size: int, src: int = 0):
    """Rank ``src``'s Python object on every rank (identity when not distributed)."""
    if not active(world_size):
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def average_gradients(optimizer: torch.optim.Optimizer, world_size: int) -> None:
    """All-reduce and average the gradients of every parameter the optimiser steps (the DDP rule)."""
    if not active(world_size):
        return
    for group in optimizer.param_groups:
        for param in group["params"]:
            if param.grad is None:
                continue
            dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
            param.grad /= world_size


def gather_in_order(values: np.ndarray, indices: np.ndarray, total: int, world_size: int) -> np.ndarray:
    """Per-rank ``values`` at dataset ``indices`` -> one array of length ``total`` in dataset order, on every rank."""
    values = np.asarray(values, dtype=np.float64)
    indices = np.asarray(indices, dtype=np.int64)
    if active(world_size):
        parts: list = [None] * world_size
        dist.all_gather_object(parts, (values, indices))
    else:
        parts = [(values, indices)]
    out = np.zeros(total, dtype=np.float64)
    seen = np.zeros(total, dtype=bool)
    for part_values, part_indices in parts:
        out[part_indices] = part_values
        seen[part_indices] = True
    if not seen.all():
        raise RuntimeError(f"{int((~seen).sum())} of {total} images got no score from any rank")
    return out


def wrap_module(module: torch.nn.Module, ctx) -> torch.nn.Module:
    """``DistributedDataParallel(module)`` when ``ctx`` is distributed (gloo on CPU, nccl on CUDA), else ``module``.

    DDP broadcasts rank 0's parameters at construction and averages gradients
    during ``backward``. The wrapper shares the module's parameters, so the
    detector keeps using (and saving) the unwrapped module.
    """
    if not active(ctx.world_size) or not any(p.requires_grad for p in module.parameters()):
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [ctx.device.index] if ctx.device.type == "cuda" and ctx.device.index is not None else None
    return DistributedDataParallel(module, device_ids=device_ids)


def gather_tensor_rows(rows: torch.Tensor, indices: np.ndarray, total: int, world_size: int) -> torch.Tensor:
    """Per-rank ``rows`` (n_i, ...) at dataset ``indices`` -> one ``(total, ...)`` tensor in dataset order."""
    indices = np.asarray(indices, dtype=np.int64)
    if active(world_size):
        parts: list = [None] * world_size
        dist.all_gather_object(parts, (rows.cpu(), indices))
    else:
        parts = [(rows.cpu(), indices)]
    first = next((r for r, _ in parts if len(r)), rows)
    out = torch.zeros((total, *first.shape[1:]), dtype=first.dtype)
    seen = np.zeros(total, dtype=bool)
    for part_rows, part_indices in parts:
        if len(part_indices):
            out[torch.as_tensor(part_indices)] = part_rows
            seen[part_indices] = True
    if not seen.all():
        raise RuntimeError(f"{int((~seen).sum())} of {total} rows came from no rank")
    return out
