"""One run over several processes (data parallel): torch.distributed with gloo on the CPU, nccl on GPUs.

How a distributed run relates to the single-process run with the same config:
- every process builds the same data and model (same seeds) and draws the same global batches; each process
  then trains on its contiguous shard of every batch tensor (rows rank*B/N .. (rank+1)*B/N); the gradients
  (and the loss, for the NaN stop and the log) are averaged over the processes before the optimiser step.
  `train.batch_size` stays the GLOBAL batch: the optimiser sees the same mean gradient, so the loss curve is
  the single-process one up to float summation order -- for models whose forward treats the examples of a batch
  independently. What looks at the whole batch sees the shard instead: batch-norm statistics (per shard, as
  in torch's DistributedDataParallel without SyncBatchNorm), MixUp/CutMix partners, dropout masks (drawn per
  process from the same seed).
- only rank 0 takes the run dir's lock, evaluates, writes the run files and checkpoints; every process
  reads the checkpoint on resume, so resuming works as in one process.
- the epoch's summed statistics are summed over the processes before rank 0 writes them.

Launch: `ablations run ... --nproc N` starts N local processes through torchrun; `torchrun --nproc-per-node N
-m ablations.cli run ...` (or a multi-node torchrun) works too: the processes find each other through
torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).

A leaf module: torch and ablations.errors only.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as tdist

from .errors import RunError

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# How long a process waits in a collective: the others wait there while rank 0 evaluates, checkpoints, runs a
# run's final test evaluation and prepares the next run (minutes on a CPU; torch's default for nccl is 10 min)
TIMEOUT = datetime.timedelta(minutes=float(os.environ.get("ABLATIONS_DIST_TIMEOUT_MIN", "120")))


class RelayedError(RunError):
    """Rank 0's error, raised on the other processes too (distributed.agree): rank 0 alone reports it."""


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: Optional[str] = None

    @property
    def main(self) -> bool:
        """The process that writes the run dir and prints (rank 0; also the only one of a plain run)."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


_current = Dist()


def current() -> Dist:
    return _current


def launched() -> bool:
    """True in a process started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def init(device_type: str) -> Dist:
    """Join the process group torchrun described in the environment (once per process): gloo for CPU runs,
    nccl for CUDA ones. A single process (no WORLD_SIZE > 1) gets the trivial Dist."""
    global _current
    if _current.active or not launched():
        return _current
    missing = [v for v in ENV_VARS if v not in os.environ]
    if missing:
        raise RunError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set: launch the "
                       "processes with torchrun (or `ablations run ... --nproc N`)")
    backend = "nccl" if device_type == "cuda" else "gloo"
    local_rank = int(os.environ["LOCAL_RANK"])
    if not tdist.is_initialized():
        kw = {}
        if backend == "nccl":  # this process's GPU before the first collective (else every one uses cuda:0)
            torch.cuda.set_device(local_rank)
            kw["device_id"] = torch.device("cuda", local_rank)
        tdist.init_process_group(backend=backend, timeout=TIMEOUT, **kw)
    _current = Dist(tdist.get_rank(), tdist.get_world_size(), local_rank, backend)
    return _current


def local_world() -> int:
    """Processes of this run on this machine (torchrun's LOCAL_WORLD_SIZE): they share its CPU cores."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", current().world) or 1) if current().active else 1


def device_for(device: torch.device) -> torch.device:
    """A CUDA run's process uses its own GPU (LOCAL_RANK); CPU processes share the CPU."""
    d = current()
    if d.active and device.type == "cuda":  # init() made it the current device before the first collective
        return torch.device("cuda", d.local_rank)
    return device


def _comm_device() -> torch.device:
    return torch.device("cuda", current().local_rank) if current().backend == "nccl" else torch.device("cpu")


def _summed(t: torch.Tensor) -> torch.Tensor:
    """`t` (float32) summed over the processes, on the device the backend talks through."""
    buf = t.detach().float().to(_comm_device())
    tdist.all_reduce(buf)
    return buf


def shard(batch: Any) -> Any:
    """This process's rows of every batch tensor (tuples, lists and dicts are walked; scalars, 0-d tensors and
    None pass through). Each tensor's first dimension must divide by the number of processes: equal shards
    keep the mean of the shards' mean losses equal to the global batch's mean loss."""
    d = current()
    if not d.active:
        return batch
    if isinstance(batch, torch.Tensor):
        if batch.ndim == 0:
            return batch
        n = batch.shape[0]
        if n % d.world:
            raise RunError(f"a batch of {n} rows does not split evenly over {d.world} processes: make the batch "
                           f"sizes (train.batch_size, and the method's unlabeled batch) multiples of {d.world}")
        k = n // d.world
        return batch[d.rank * k:(d.rank + 1) * k]
    if isinstance(batch, tuple):
        return tuple(shard(b) for b in batch)
    if isinstance(batch, list):
        return [shard(b) for b in batch]
    if isinstance(batch, dict):
        return {k: shard(v) for k, v in batch.items()}
    return batch


def average_gradients(module: torch.nn.Module, loss: torch.Tensor) -> torch.Tensor:
    """Average the gradients of `module` and the loss over the processes, in one all-reduce of one flat
    buffer (per-parameter calls cost a round trip each). Returns the averaged loss (detached)."""
    if not current().active:
        return loss.detach()
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    flat = _summed(torch.cat([g.reshape(-1).float() for g in grads] + [loss.detach().float().reshape(1)]))
    flat /= current().world
    i = 0
    for g in grads:
        g.copy_(flat[i:i + g.numel()].view_as(g))
        i += g.numel()
    return flat[-1].to(loss.device)


def mean_over_processes(t: torch.Tensor) -> torch.Tensor:
    """The mean of `t` over the processes (every process must call it at the same point of its step)."""
    if not current().active:
        return t
    return (_summed(t) / current().world).to(t.device, t.dtype)


def same_everywhere(obj: Any) -> Any:
    """Rank 0's `obj` on every process (a picklable object: a study's plan, decided once)."""
    if not current().active:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def sum_stats(sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An epoch's summed train_step statistics, summed over the processes as well (sorted keys: every
    process packs them in the same order)."""
    if not current().active or not sums:
        return sums
    keys = sorted(sums)
    flat = _summed(torch.stack([torch.as_tensor(sums[k]).detach().float().reshape(()).cpu() for k in keys]))
    return {k: flat[i].cpu() for i, k in enumerate(keys)}


def broadcast_module(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers on every process (they start equal from the seed; this makes sure)."""
    if not current().active:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            if t.is_floating_point() or t.dtype in (torch.int64, torch.int32):
                buf = t.detach().to(_comm_device())
                tdist.broadcast(buf, 0)
                if buf.data_ptr() != t.data_ptr():
                    t.copy_(buf)


def close(finished: bool) -> None:
    """Leave the process group before the process exits. Without it a process that returns first (rank 1
    while rank 0 writes the report) can die at interpreter exit with gloo's "terminate called without an
    active exception" (SIGABRT), and torchrun then kills the others: a run that finished exits non-zero.
    `finished`: every process got here by the same path, so they meet at a barrier first (no process still
    waits on a collective); after an error only this process's side is torn down."""
    global _current
    if not tdist.is_initialized():
        return
    if finished and _current.active:
        tdist.barrier()
    tdist.destroy_process_group()
    _current = Dist()


def agree(error: Optional[str]) -> None:
    """Rank 0's error (or None) on every process: all of them raise it together rather than leave the others
    waiting at the next collective."""
    error = same_everywhere(error)
    if error:
        raise RunError(error) if current().main else RelayedError(error)
