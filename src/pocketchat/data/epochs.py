"""The training loop's `get_batch(step, batch_size, index, count)` contract over a fixed list of items.

The batch of a step is a pure function of (seed, step): the item stream is epoch after epoch, each a permutation
of all items seeded by (seed, epoch), and step s takes the next batch_size items of it. So resuming at step s
gives exactly the batches an uninterrupted run would have seen. SFT rows and RM/DPO pairs both batch this way.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from pocketchat.errors import UserError


class EpochBatches:
    """A base for datasets of len(self) items with `batch(indices)` and a `seed`."""

    seed: int
    _epoch_perm: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _item_at(self, position: int) -> int:
        """Item at `position` of the endless stream of per-epoch permutations."""
        epoch, i = divmod(position, len(self))
        if self._epoch_perm is None or self._epoch_perm[0] != epoch:
            self._epoch_perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self)))
        return int(self._epoch_perm[1][i])

    def get_batch(self, step: int, batch_size: int, index: int = 0, count: int = 1) -> dict[str, torch.Tensor]:
        """The index-th of `count` equal slices of step's global batch of batch_size items."""
        if batch_size % count:
            raise UserError(f"batch_size {batch_size} is not divisible into {count} slices")
        per = batch_size // count
        start = step * batch_size + index * per
        return self.batch([self._item_at(p) for p in range(start, start + per)])

    def eval_batches(self, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        """Every item once, in order: the same batches on every call (for validation loss)."""
        for i in range(0, len(self), batch_size):
            yield self.batch(range(i, min(i + batch_size, len(self))))
