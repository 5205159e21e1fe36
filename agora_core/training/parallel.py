"""Data-parallel training over the ranks of a torchrun launch (one process: every helper is a no-op).

The rule that makes ``W`` ranks x batch ``b`` train like one process x batch ``W b``: every random
draw is made for the **global** batch, from the one seed, identically on every rank, and rank ``r``
keeps the rows ``r, r + W, r + 2W, ...`` of it (:class:`BatchShard`):

* latents, the poses of fakes and the real images' order come from the trainer's seeded
  ``torch.Generator``, the generator's noise maps from torch's global RNG seeded alike on every rank
  (drawn for the global batch under :func:`~agora_core.generator.stylegan.noise_rows`); so rank ``r``'s
  random numbers are a function of the one seed, its rank and the world size, and together the
  ranks' numbers are exactly those of one process;
* real images follow one permutation of the dataset per epoch (:class:`EpochOrder`; the permutation
  of epoch ``e`` is seeded by ``(seed, e)``), so within an epoch no image is seen twice, across ranks
  included, and each rank loads only its rows of each batch;
* gradients are averaged by ``DistributedDataParallel`` (G and D); the running mean ``w_avg`` of the
  mapping network is averaged over ranks after each step (:func:`average_over_ranks`), which is the
  global batch's update;
* D's minibatch standard deviation is taken over each rank's rows; the strided rows keep its groups
  (sample ``i`` in group ``i mod B/g``) those of one process when the group size divides the per-rank batch.

Nothing here is per rank in a checkpoint: the step, the images seen, the seeded generator's state and
the global RNG state are the same on every rank, so a run resumes at any world size that divides
the global batch.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import nn

from agora_core.types.distributed import DistContext, DistributedError


def derive_seed(seed: int, *tags: object) -> int:
    """A 63-bit seed derived from ``seed`` and ``tags`` (e.g. ``("epoch", 3)``): independent streams from one seed."""
    text = repr((int(seed), *tags)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & (2**63 - 1)


def per_rank_batch(batch: int, world_size: int) -> int:
    """The batch of each rank when the global ``batch`` is split over ``world_size`` ranks (at least 2 each,
    for the discriminator's minibatch statistics); a split that does not work is one clear error."""
    if world_size < 1:
        raise DistributedError(f"world size must be positive, got {world_size}")
    local, rest = divmod(int(batch), int(world_size))
    if rest or local < 2:
        fits = [w for w in range(1, batch // 2 + 1) if batch % w == 0]
        raise DistributedError(f"the global batch {batch} does not split over {world_size} rank(s) into equal "
                               f"per-rank batches of at least 2: launch {', '.join(map(str, fits))} rank(s)")
    return local


@dataclass(frozen=True)
class BatchShard:
    """Rank ``rank`` of ``world_size`` takes rows ``rank::world_size`` of each global batch."""

    rank: int = 0
    world_size: int = 1

    @staticmethod
    def of(ctx: DistContext) -> BatchShard:
        return BatchShard(ctx.rank, ctx.world_size)

    @property
    def rows(self) -> slice:
        return slice(self.rank, None, self.world_size)

    def take(self, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global-batch tensor (the tensor itself for one process)."""
        return tensor if self.world_size == 1 else tensor[self.rows]


class EpochOrder:
    """The order in which real images are shown: one seeded permutation of the ``n`` rows per epoch.

    Position ``p`` (counting every real image shown by any rank since the start of the run) is row
    ``perm(p // n)[p % n]``: a function of the position alone, so the order needs no saved state.
    """

    def __init__(self, n: int, seed: int):
        if n < 1:
            raise ValueError("EpochOrder needs at least one row")
        self.n = int(n)
        self.seed = int(seed)
        self._cache: dict[int, torch.Tensor] = {}

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._cache:
            if len(self._cache) >= 2:
                self._cache.pop(min(self._cache))
            g = torch.Generator().manual_seed(derive_seed(self.seed, "epoch", epoch))
            self._cache[epoch] = torch.randperm(self.n, generator=g)
        return self._cache[epoch]

    def rows(self, start: int, count: int) -> torch.Tensor:
        """Dataset rows at positions ``[start, start + count)``."""
        pos = torch.arange(int(start), int(start) + int(count))
        epochs, offsets = pos // self.n, pos % self.n
        out = torch.empty(count, dtype=torch.long)
        for e in torch.unique(epochs).tolist():
            sel = epochs == e
            out[sel] = self.permutation(int(e))[offsets[sel]]
        return out


def wrap_data_parallel(module: nn.Module, ctx: DistContext) -> nn.Module:
    """``module`` under ``DistributedDataParallel`` when several ranks run, else ``module`` itself.

    Buffers are not re-broadcast at each forward (rank 0's would overwrite the others' running
    statistics); the caller averages the ones that change (:func:`average_over_ranks`)."""
    if not ctx.distributed:
        return module
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    # PyTorch >= 2.13 names it forward_sync_buffers (and deprecates broadcast_buffers); earlier versions
    no_buffer_sync = ({"forward_sync_buffers": False}
                      if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
                      else {"broadcast_buffers": False})
    return DistributedDataParallel(module, device_ids=None, **no_buffer_sync)


@torch.no_grad()
def average_over_ranks(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """``tensor`` replaced, in place, by its mean over ranks (unchanged for one process)."""
    if ctx.distributed:
        ctx.all_reduce_sum(tensor)
        tensor.div_(ctx.world_size)
    return tensor


def mean_and_any(values: list[float], flag: bool, ctx: DistContext, device: torch.device) -> tuple[list[float], bool]:
    """One collective per step: the ranks' mean of ``values`` and whether any rank raised ``flag``
    (e.g. its time budget ran out, so that every rank stops after the same step)."""
    if not ctx.distributed:
        return values, flag
    t = torch.tensor([*values, float(flag)], dtype=torch.float64, device=device)
    ctx.all_reduce_sum(t)
    out = (t[:-1] / ctx.world_size).tolist()
    return out, bool(t[-1] > 0)


__all__ = [
    "BatchShard", "EpochOrder", "average_over_ranks", "derive_seed", "mean_and_any", "per_rank_batch",
    "wrap_data_parallel",
]
