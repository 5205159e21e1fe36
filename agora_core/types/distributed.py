"""One process, one node or many: the process group of a ``torchrun`` launch, seen by every stage.

``torchrun`` (``python -m torch.distributed.run``) starts one process per device and tells each its
place through the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``). :func:`distributed_session` reads it and joins the process group - NCCL when the
ranks compute on CUDA, Gloo on the CPU - and yields a :class:`DistContext`; without ``torchrun`` (or
with one process) it yields the single-process context :data:`SINGLE` and starts nothing, so the
same code serves one process, one node and many. :func:`rank_device` gives each rank its GPU.

The helpers below are the few collectives the training and the extraction need, written so that a
single process runs them as no-ops: sums over ranks, broadcasts from rank 0, point-to-point tensors
of any shape, and contiguous shards of ``N`` rows.
"""
from __future__ import annotations

import contextlib
import datetime
import inspect
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from agora_core.types.errors import AgoraError

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
DEFAULT_TIMEOUT_MIN = 60.0  # a collective waits this long for the slowest rank (rank 0 alone writes outputs)


class DistributedError(AgoraError):
    """A launch that cannot work: torchrun's environment, the device or the world size does not fit."""


@dataclass(frozen=True)
class DistContext:
    """This process's place in the launch: ``rank`` of ``world_size`` processes, ``local_rank`` on its node.

    ``backend`` is ``None`` for a single process (no process group), else ``"nccl"`` or ``"gloo"``.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.backend is not None and self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prints, logs and writes outputs."""
        return self.rank == 0

    def shard(self, n: int) -> tuple[int, int]:
        """The contiguous rows ``[start, stop)`` of ``n`` that this rank owns (sizes differ by at most one)."""
        return shard_bounds(n, self.rank, self.world_size)

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over ranks, in place (unchanged in a single process)."""
        if self.distributed:
            self._in_place(tensor, lambda t: torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM))
        return tensor

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        """``tensor`` overwritten with rank ``src``'s, in place (every rank passes one of the same shape)."""
        if self.distributed:
            self._in_place(tensor, lambda t: torch.distributed.broadcast(t, src=src))
        return tensor

    def _in_place(self, tensor: torch.Tensor, collective) -> None:
        comm = self._on_comm(tensor)
        collective(comm)
        if comm is not tensor:
            tensor.copy_(comm)

    def send(self, tensors: list[torch.Tensor], dst: int) -> None:
        """Send tensors of any shape and dtype to rank ``dst`` (its :meth:`recv` gets them in order)."""
        for t in tensors:
            shape = torch.tensor([t.dim(), *t.shape], dtype=torch.int64)
            header = torch.zeros(9, dtype=torch.int64)
            header[:shape.numel()] = shape
            torch.distributed.send(self._on_comm(header), dst)
            torch.distributed.send(self._on_comm(t.contiguous()), dst)

    def recv(self, dtypes: list[torch.dtype], src: int) -> list[torch.Tensor]:
        """Receive what rank ``src`` sent with :meth:`send` (one dtype per tensor), on the CPU."""
        out = []
        for dtype in dtypes:
            header = self._on_comm(torch.zeros(9, dtype=torch.int64))
            torch.distributed.recv(header, src)
            header = header.cpu()
            shape = [int(x) for x in header[1:1 + int(header[0])]]
            t = self._on_comm(torch.empty(shape, dtype=dtype))
            torch.distributed.recv(t, src)
            out.append(t.cpu())
        return out

    def _on_comm(self, t: torch.Tensor) -> torch.Tensor:
        """NCCL moves CUDA tensors only; Gloo CPU ones."""
        if self.backend == "nccl":
            return t.to(torch.device("cuda", self.local_rank))
        return t.cpu()


SINGLE = DistContext()


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of rank ``rank`` when ``n`` rows are split in ``world_size`` contiguous shards."""
    base, extra = divmod(int(n), int(world_size))
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def launched_by_torchrun() -> bool:
    """True when the environment names this process's rank (torchrun, SLURM + torchrun, a test launcher)."""
    return all(k in os.environ for k in ENV_KEYS)


def launch_world_size() -> int:
    """The number of processes torchrun started (1 without torchrun), read before joining any group."""
    return _env_int("WORLD_SIZE") if launched_by_torchrun() else 1


def _env_int(key: str) -> int:
    value = os.environ[key]
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"the environment variable {key}={value!r} is not an integer "
                               "(start the command with torchrun)") from None


def rank_device(device: torch.device, ctx: DistContext) -> torch.device:
    """The device of this rank: under torchrun, ``cuda`` becomes ``cuda:LOCAL_RANK`` (the CPU stays the
    CPU). A launch that cannot work - one named GPU for several ranks, more ranks on a node than GPUs -
    raises :class:`DistributedError`."""
    if device.type != "cuda" or not ctx.distributed:
        return device
    if device.index is not None:
        raise DistributedError(f"--device {device} names one GPU, but {ctx.world_size} ranks run: pass --device cuda "
                               "(each rank then takes the GPU of its LOCAL_RANK)")
    if ctx.local_rank >= torch.cuda.device_count():
        raise DistributedError(f"rank {ctx.rank} has LOCAL_RANK {ctx.local_rank} but this node has "
                               f"{torch.cuda.device_count()} GPU(s): start at most that many processes per node")
    return torch.device("cuda", ctx.local_rank)


def init_distributed(device_type: str = "cpu", timeout_min: float = DEFAULT_TIMEOUT_MIN) -> DistContext:
    """Join the process group that torchrun's environment describes - NCCL when the ranks compute on
    ``device_type`` ``"cuda"``, Gloo on ``"cpu"`` - or none (one process: :data:`SINGLE`)."""
    if not launched_by_torchrun():
        return SINGLE
    rank, world, local = (_env_int(k) for k in ENV_KEYS)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise DistributedError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}, "
                               f"LOCAL_RANK={local}")
    if world == 1:
        return SINGLE
    if not torch.distributed.is_available():
        raise DistributedError("this PyTorch build has no torch.distributed: run one process")
    backend = "nccl" if device_type == "cuda" else "gloo"
    ctx = DistContext(rank, world, local, backend)
    kwargs = {}
    if backend == "nccl":
        dev = rank_device(torch.device("cuda"), ctx)
        torch.cuda.set_device(dev)
        if "device_id" in inspect.signature(torch.distributed.init_process_group).parameters:  # PyTorch >= 2.3
            kwargs["device_id"] = dev
    torch.distributed.init_process_group(backend, rank=rank, world_size=world,
                                         timeout=datetime.timedelta(minutes=timeout_min), **kwargs)
    return ctx


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (a no-op for a single process)."""
    if ctx.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@contextlib.contextmanager
def distributed_session(device_type: str = "cpu") -> Iterator[DistContext]:
    """``with distributed_session("cuda") as ctx:`` - the process group for the block's duration."""
    ctx = init_distributed(device_type)
    try:
        yield ctx
    finally:
        shutdown(ctx)


__all__ = [
    "DEFAULT_TIMEOUT_MIN", "DistContext", "DistributedError", "SINGLE", "distributed_session", "init_distributed",
    "launch_world_size", "launched_by_torchrun", "rank_device", "shard_bounds", "shutdown",
]
