"""Fill DSKI's noise-map caches before training forks its loader processes, so that ``--workers N`` uses them.

Why: with ``--workers N`` the maps are computed in DataLoader processes, which are forked afresh for every
epoch (and every embedding pass of the tuning hold-out) from the main process. A map an epoch's worker
computes and keeps dies with that worker, so without this step every un-augmented image's maps were computed
again each epoch: the cache that makes ``--workers 0`` epochs cheap did nothing with workers. Here the maps of
every image that training and tuning will see are computed once, in N loader processes, and kept in the main
process's caches; each later fork inherits them (copy-on-write: the tensors' memory is shared, not copied).

The maps are those :meth:`~mfx_dski.model.NoiseMaps.image_maps` would compute, keyed by the same pixel digest,
so no number changes: only where and how often the maps are computed. It needs the ``fork`` start method
(Linux's default before Python 3.14): under ``spawn`` or ``forkserver`` a worker receives a pickled copy of the
detector instead, and the step is skipped (logged).
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from typing import TYPE_CHECKING, Any, Sequence

import torch

from medforensics_core.data.dataset import ImageSet
from medforensics_core.engine.context import FitContext

from .model import NoiseMaps, pixel_digest

if TYPE_CHECKING:
    from .detector import DSKIBase

log = logging.getLogger(__name__)


class UnaugmentedMaps(torch.utils.data.Dataset):
    """Item ``i``: the pixel digest of image ``i`` and its maps under each cache (empty when all already hold it)."""

    def __init__(self, images: ImageSet, caches: Sequence[NoiseMaps]):
        self.images = images
        self.caches = list(caches)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[bytes, list[torch.Tensor]]:
        image, _ = self.images[index]
        key = pixel_digest(image)
        if all(key in maps for maps in self.caches):
            return key, []
        return key, [maps.maps(image[None])[0] for maps in self.caches]


def warm_map_caches(detector: "DSKIBase", sets: Sequence[ImageSet | None], ctx: FitContext) -> dict[str, Any]:
    """Compute, in ``ctx.num_workers`` loader processes, the maps of every image of ``sets`` and keep them in the
    detector's caches (up to their shared budget). Returns what was done, for ``train_info``."""
    caches = [maps for maps in (detector.noise_maps, detector.trace_maps) if maps is not None and maps.budget.limit > 0]
    images = [s for s in sets if s is not None and len(s)]
    if ctx.num_workers <= 0 or not caches or not images:
        return {}
    start_method = multiprocessing.get_start_method()
    if start_method != "fork":
        log.info("DSKI: loader processes start by %r, not 'fork': they cannot inherit the noise-map cache, so each "
                 "epoch computes the maps again", start_method)
        return {"skipped": f"start method {start_method}"}
    started, kept, total = time.perf_counter(), 0, sum(len(s) for s in images)
    dataset = torch.utils.data.ConcatDataset([UnaugmentedMaps(s, caches) for s in images])
    # batch_size=None: items one by one (their sizes differ); a generator of its own leaves the global stream alone
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=ctx.num_workers,
                                         generator=torch.Generator().manual_seed(0))
    for key, found in ctx.track(loader, total, f"{detector.name} noise maps"):
        # a copy: a tensor received from a worker holds a shared-memory handle (a file descriptor) while it lives
        if found:
            kept += all([cache.keep(key, maps.clone()) for cache, maps in zip(caches, found)])
    seconds = time.perf_counter() - started
    log.info("DSKI: noise maps of %d images computed in %d loader processes (%.1f s), %d kept",
             total, ctx.num_workers, seconds, kept)
    return {"images": total, "kept": kept, "seconds": round(seconds, 2), "workers": ctx.num_workers}
