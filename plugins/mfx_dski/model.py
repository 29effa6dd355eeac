"""DSKI's trainable modules, their per-module seeded initialisation, and the native-resolution noise maps.

Why per-module seeds: an ablation removes a part, and everything it keeps must
start from the same weights as in the full model, or the comparison measures a
different initialisation as well as the missing part. Each sub-module (every
adapter's spatial part, its cross-attention, the noise embedding, the prompt
context) is therefore initialised from its own seed derived from (seed, module
name), independent of which other modules exist or of the order they are built.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medforensics_core.errors import ConfigError, MfxError
from medforensics_core.interfaces import NoiseExtractor
from medforensics_core.seeding import rank_seed, torch_generator

from .cdfa import CDFA, CDFAAdapter, NoiseTokens
from .prompts import PromptContext

REFERENCE_SIZE = 64
"""Side of the white-noise image whose statistics centre the retrieval descriptor."""


class DSKIModules(nn.Module):
    """Every trainable (and saved) part of DSKI: the CDFA adapters and the prompt context, each optional."""

    def __init__(self, cdfa: CDFA | None, context: PromptContext | None):
        super().__init__()
        self.cdfa = cdfa
        self.context = context


def _seeded(seed: int, name: str) -> torch.Generator:
    return torch_generator(seed, "dski", name)


def _uniform(like: torch.Tensor, bound: float, generator: torch.Generator) -> torch.Tensor:
    """Uniform draws in ``[-bound, bound]`` of ``like``'s shape, made on the CPU (where the seeded generators
    live): the same start on any device, and a CUDA tensor cannot draw from a CPU generator."""
    return torch.empty(like.shape, dtype=torch.float32).uniform_(-bound, bound, generator=generator)


def _reset_linear(layer: nn.Linear | nn.Conv2d, generator: torch.Generator) -> None:
    """PyTorch's default ``nn.Linear`` / ``nn.Conv2d`` initialisation (bound ``1/sqrt(fan_in)``), drawn from
    ``generator``."""
    bound = 1.0 / layer.weight[0].numel() ** 0.5
    with torch.no_grad():
        layer.weight.copy_(_uniform(layer.weight, bound, generator))
        if layer.bias is not None:
            layer.bias.copy_(_uniform(layer.bias, bound, generator))


def _reset_adapter(adapter: CDFAAdapter, seed: int, name: str) -> None:
    with torch.no_grad():
        _reset_linear(adapter.down, _seeded(seed, f"{name}.spatial"))
        adapter.up.weight.zero_()
        adapter.up.bias.zero_()
        if adapter.cross is not None:
            generator = _seeded(seed, f"{name}.cross")
            for weight in (adapter.cross.in_proj_weight, adapter.cross.out_proj.weight):
                bound = (6.0 / sum(weight.shape)) ** 0.5  # xavier-uniform, as MultiheadAttention does
                weight.copy_(_uniform(weight, bound, generator))
            adapter.cross.in_proj_bias.zero_()
            adapter.cross.out_proj.bias.zero_()
            adapter.gate.zero_()


def _reset_noise(noise: NoiseTokens, seed: int) -> None:
    generator = _seeded(seed, "cdfa.noise")
    with torch.no_grad():
        for layer in noise.embed:
            if isinstance(layer, nn.Linear):
                _reset_linear(layer, generator)
        noise.position.copy_(torch.randn(noise.position.shape, generator=generator) * 0.02)
        noise.norm.reset_parameters()
        if noise.trace is not None:
            stem = _seeded(seed, "cdfa.noise.trace")
            for conv in (noise.trace.conv1, noise.trace.conv2):
                _reset_linear(conv, stem)


def reset_parameters(net: DSKIModules, seed: int, rank: int = 0) -> None:
    """(Re-)initialise every trainable module from its own seed derived from ``(seed, module name)``.

    Weights are the same on every ``torchrun`` rank; the noise-dropout stream is the rank's own
    (:func:`~medforensics_core.seeding.rank_seed`; rank 0's is the single-process one).
    """
    if net.cdfa is not None:
        for index, adapter in net.cdfa.adapters.items():
            _reset_adapter(adapter, seed, f"cdfa.adapters.{index}")
        if net.cdfa.noise is not None:
            _reset_noise(net.cdfa.noise, seed)
            net.cdfa.noise.dropout_generator = _seeded(rank_seed(seed, rank), "cdfa.noise.dropout")
    if net.context is not None:
        with torch.no_grad():
            vectors = torch.randn(net.context.vectors.shape, generator=_seeded(seed, "context")) * 0.02
            net.context.vectors.copy_(vectors)


@dataclasses.dataclass
class CacheBudget:
    """Bytes that several map caches share: DSKI's cell-statistic maps and trace maps draw on one
    ``noise_cache_mb``, so the setting bounds the memory the caches take together, not each of them."""

    limit: int
    used: int = 0

    def take(self, size: int) -> bool:
        """Reserve ``size`` bytes if they fit (True), else leave the budget as it is (False)."""
        if self.used + size > self.limit:
            return False
        self.used += size
        return True


class NoiseMaps:
    """Fixed noise extractors applied to one image at native resolution, before any resize (float32).

    Their per-pixel maps are packed after the three colour channels by DSKI's
    preprocessing and follow the image through resize, crop and flip, so the noise
    branch and the retrieval descriptor see statistics of the pixels as stored,
    not of the backbone's resampled copy. Extractors with trainable weights (e.g.
    ``bayar``) cannot run there and are refused.

    The maps of an image depend on its pixels only, and training sees the same
    un-augmented image every epoch (and tuning embeds the same hold-out after every
    epoch), so :meth:`image_maps` keeps them, keyed by a digest of the pixels, up
    to ``cache_mb`` megabytes (0 = no cache), or within a ``budget`` shared with other
    maps. Augmented images are not kept: they never come back.
    """

    def __init__(self, extractors: Mapping[str, NoiseExtractor], cache_mb: float = 0.0,
                 budget: CacheBudget | None = None):
        trainable = [name for name, ex in extractors.items() if any(True for _ in ex.parameters())]
        if trainable:
            raise ConfigError(f"noise extractor {', '.join(trainable)} has trainable weights; DSKI's noise branch "
                              f"runs extractors once per image at native resolution, so only fixed ones "
                              f"(e.g. noise-stats, srm, wavelet, npr) can be used")
        self.extractors = dict(extractors)
        for extractor in self.extractors.values():
            extractor.eval()
        self.channels = sum(ex.out_channels for ex in self.extractors.values())
        self._reference: torch.Tensor | None = None
        self.budget = budget if budget is not None else CacheBudget(int(cache_mb * 2**20))
        self._cache: dict[bytes, torch.Tensor] = {}
        self.cached_bytes = 0  # this cache's own share of the budget

    def energy_channels(self) -> tuple[int, ...]:
        """Channels that are per-band log local energies (extractors declaring ``local_energy_channels``)."""
        found, offset = [], 0
        for extractor in self.extractors.values():
            found += [offset + c for c in getattr(extractor, "local_energy_channels", ())]
            offset += extractor.out_channels
        return tuple(found)

    def caches(self, image: torch.Tensor) -> bool:
        """Whether :meth:`image_maps` looks ``image`` up (a budget is set, and the image is on the CPU)."""
        return self.budget.limit > 0 and image.device.type == "cpu"

    def image_maps(self, image: torch.Tensor, keep: bool = True, key: bytes | None = None) -> torch.Tensor:
        """Maps ``(channels, H, W)`` of one image ``(3, H, W)``; kept for next time when ``keep`` and room is left.

        ``keep=False`` (an augmented image: it never comes back) neither looks up nor digests the image; the maps
        are the same either way. ``key`` is the image's :func:`pixel_digest` when the caller already has it (one
        digest for several caches of the same image: hashing the pixels costs a sixth of the maps themselves).
        """
        if not keep or not self.caches(image):
            return self.maps(image[None])[0]
        key = pixel_digest(image) if key is None else key
        found = self._cache.get(key)
        if found is not None:
            return found
        found = self.maps(image[None])[0]
        size = found.numel() * found.element_size()
        if self.budget.take(size):
            self._cache[key] = found
            self.cached_bytes += size
        return found

    @torch.no_grad()
    def maps(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` in [0, 1] -> ``(N, channels, H, W)`` float32 (down-sampled maps brought back, nearest)."""
        images = images.float()
        size = images.shape[-2:]
        out = []
        for extractor in self.extractors.values():
            with torch.autocast(images.device.type, enabled=False):
                found = extractor(images).float()
            out.append(found if found.shape[-2:] == size else F.interpolate(found, size=size, mode="nearest"))
        return torch.cat(out, dim=1)

    def reference(self) -> torch.Tensor:
        """Mean statistics of white Gaussian noise ``(channels,)`` (cached): the descriptor's origin."""
        if self._reference is None:
            generator = torch.Generator().manual_seed(0)
            grey = (0.5 + 0.05 * torch.randn(1, 1, REFERENCE_SIZE, REFERENCE_SIZE, generator=generator))
            self._reference = self.maps(grey.clamp(0, 1).expand(1, 3, -1, -1)).mean(dim=(0, 2, 3))
        return self._reference


def pixel_digest(image: torch.Tensor) -> bytes:
    """A digest of an image's shape, dtype and pixels (the key of the noise-map cache)."""
    array = image.detach().contiguous().numpy()
    digest = hashlib.blake2b(str((array.shape, array.dtype)).encode(), digest_size=16)
    digest.update(array.tobytes())
    return digest.digest()


def descriptor(cells: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The retrieval descriptor ``(N, C)`` of per-cell statistics ``(N, cells, C)``: their mean (the image's mean
    statistics, the cells being equal) minus white noise's, L2-normalised."""
    centred = cells.float().mean(dim=1) - reference.to(cells.device)
    return F.normalize(centred, dim=-1)


def patch_means(maps: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Mean of ``maps`` ``(N, C, H, W)`` over each cell of a ``grid``: ``(N, cells, C)``, cells row-major.

    Average pooling with the cell as kernel when the grid divides the map (always, for a ViT input);
    adaptive pooling (nearly equal cells) otherwise.
    """
    h, w = maps.shape[-2:]
    gh, gw = grid
    pooled = F.avg_pool2d(maps, (h // gh, w // gw)) if not (h % gh or w % gw) else F.adaptive_avg_pool2d(maps, grid)
    return pooled.flatten(2).transpose(1, 2)


class CellStats:
    """Noise statistics pooled onto the ViT's token grid in preprocessing, packed into a few image channels.

    Why: the noise branch needs one mean per statistic and token cell, and the descriptor their
    mean; nothing downstream looks at single pixels. Pooling each image once in the data loader
    (after crop and flip, so cells match the tokens the backbone sees) and packing the
    ``cells x C`` numbers into ``ceil(cells C / size^2)`` channels of the batch (one, for the
    presets) makes the batch ~5x smaller than ``3 + C`` full maps, and takes a memory-bound
    pooling over ``C`` full-resolution maps out of the model's forward pass.
    """

    def __init__(self, channels: int, grid: tuple[int, int], size: int):
        self.channels = channels
        self.grid = (int(grid[0]), int(grid[1]))
        self.size = size
        self.cells = self.grid[0] * self.grid[1]
        self.packed_channels = -(-self.cells * channels // (size * size))

    def pack(self, maps: torch.Tensor) -> torch.Tensor:
        """``(V, C, size, size)`` full maps -> ``(V, packed_channels, size, size)`` float32."""
        cells = patch_means(maps.float(), self.grid).flatten(1)
        room = self.packed_channels * self.size * self.size
        return F.pad(cells, (0, room - cells.shape[1])).reshape(len(maps), self.packed_channels, self.size, self.size)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """``(N, packed_channels, size, size)`` -> per-cell statistics ``(N, cells, C)``."""
        return packed.flatten(1)[:, :self.cells * self.channels].reshape(len(packed), self.cells, self.channels)


def split_channels(batch: torch.Tensor, noise_channels: int) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """A preprocessed batch -> (CLIP input ``(N V, 3, S, S)``, packed statistics ``(N V, P, S, S)`` or None, V).

    A test-time batch may carry ``V`` views (crops) of each image stacked along the channels
    (``V (3 + P)`` channels, see :class:`GridViews`); they come back as ``N V`` single views, image-major.
    ``noise_channels`` is ``P``, the packed channels of :class:`CellStats` (0 without statistics), plus the
    ``T`` channels of a full-resolution trace map where the detector has one.
    """
    per_view = 3 + noise_channels
    if batch.shape[1] % per_view:
        raise MfxError(f"DSKI expects a multiple of {per_view} channels per image (colour + noise statistics, "
                       f"per view), got {batch.shape[1]}: pass images through detector.preprocess")
    views = batch.shape[1] // per_view
    flat = batch.reshape(batch.shape[0] * views, per_view, *batch.shape[2:])
    return flat[:, :3], (flat[:, 3:] if noise_channels else None), views


class GridViews:
    """``n x n`` crops of side ``size`` evenly spaced over the image, stacked along the channels.

    Why: a crop at native resolution keeps the pixel traces a resize would erase, but a backbone
    whose input is smaller than the image then sees part of it only; a local edit (an inpainted
    lesion) outside the centre crop would never be looked at. The grid's first and last crops
    touch the borders, so every pixel is in at least one crop. ``n = 1`` is the centre crop.
    An image smaller than ``size`` must be brought to it first (DSKI upscales it).
    """

    def __init__(self, size: int, per_side: int):
        self.size = size
        self.per_side = max(1, per_side)

    def offsets(self, length: int) -> list[int]:
        if self.per_side == 1:
            return [int(round((length - self.size) / 2.0))]
        span = length - self.size
        return [int(round(i * span / (self.per_side - 1))) for i in range(self.per_side)]

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        if min(height, width) < self.size:
            raise MfxError(f"image {height}x{width} is smaller than the {self.size}-pixel crop")
        crops = [image[..., top:top + self.size, left:left + self.size]
                 for top in self.offsets(height) for left in self.offsets(width)]
        return torch.cat(crops, dim=0)


def mean_over_views(values: torch.Tensor, views: int) -> torch.Tensor:
    """``(N V, ...)`` -> ``(N, ...)``: the mean over each image's views."""
    if views == 1:
        return values
    return values.reshape(values.shape[0] // views, views, *values.shape[1:]).mean(dim=1)


def noise_channel_count(maps: NoiseMaps | None) -> int:
    """``C``, the statistics per pixel (and the descriptor's length); 0 without noise maps."""
    return maps.channels if maps is not None else 0


def check_extractors(names: Sequence[str]) -> None:
    if not names:
        raise ConfigError("the noise branch or the retrieval descriptor needs at least one name in noise_extractors")
