"""Image readers (placeholder: PNG/JPEG through Pillow; DICOM, NIfTI, TIFF to come in the data-layer work)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import BadInputError


@dataclasses.dataclass
class LoadedImage:
    tensor: torch.Tensor  # (3, H, W) float32 in [0, 1]
    meta: dict[str, Any]


def read_image(path: str | Path) -> LoadedImage:
    path = Path(path)
    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    except Exception as exc:  # noqa: BLE001
        raise BadInputError(path, f"cannot read image ({exc})") from None
    return LoadedImage(torch.from_numpy(arr).permute(2, 0, 1).contiguous(), {"format": "pil"})
