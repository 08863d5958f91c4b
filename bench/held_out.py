"""The held-out photographs of ``bench.stylize``: scikit-image's held-out photos and photographs from Debian's
``mate-backgrounds`` package.

``mate-backgrounds`` (GPL-2+) is reserved for this evaluation: no training set of the project uses it. Only its
twelve photographs are used (the ``nature`` set; its paintings, renderings, logos and stripes are left out).
It is never installed: ``apt-get download`` fetches the ``.deb`` (or one is given) and ``dpkg-deb -x`` unpacks it
into a cache directory once. Debian's ``plasma-workspace-wallpapers`` and ``lomiri-wallpapers*`` are reserved for
independent evaluation and used nowhere in the project.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import cv2
import numpy as np

from edge_worker.model.stylizer import resize
from edge_worker.training import HELD_OUT_PHOTOS, bundled_photo

logger = logging.getLogger(__name__)

MATE_PACKAGE = "mate-backgrounds"
MATE_ROOT = Path("usr/share/backgrounds/mate")
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mvstylizer" / MATE_PACKAGE
"""Where the package is unpacked once (``--photo-cache``)."""
MATE_CONTENTS = (
    "nature/Dune.jpg",
    "nature/Storm.jpg",
    "nature/LadyBird.jpg",
    "nature/Garden.jpg",
    "nature/TwoWings.jpg",
    "nature/GreenMeadow.jpg",
)
"""Photographs used as contents (beside scikit-image's held-out photos)."""
MATE_STYLES = (
    "nature/YellowFlower.jpg",
    "nature/Aqua.jpg",
    "nature/FreshFlower.jpg",
    "nature/RainDrops.jpg",
    "nature/Wood.jpg",
    "nature/Blinds.jpg",
)
"""Photographs used as styles."""
SKIMAGE_PREFIX, MATE_PREFIX = "skimage:", "mate:"
COMMAND_TIMEOUT_S = 300

Photo = tuple[str, np.ndarray]
"""(name, RGB uint8)."""


def mate_backgrounds(cache: Path = DEFAULT_CACHE, deb: Path | None = None) -> Path:
    """The package's backgrounds directory, unpacked into ``cache`` on first use from ``deb`` or from
    ``apt-get download mate-backgrounds`` (needs Debian's package lists: ``apt-get update``)."""
    root = cache / MATE_ROOT
    if root.is_dir():
        return root
    with tempfile.TemporaryDirectory() as tmp:
        if deb is None:
            _run(["apt-get", "download", MATE_PACKAGE], cwd=Path(tmp))
            deb = next(Path(tmp).glob(f"{MATE_PACKAGE}_*.deb"))
        staging = Path(tempfile.mkdtemp(prefix=f"{cache.name}.", dir=_parent(cache)))
        try:
            _run(["dpkg-deb", "-x", str(deb), str(staging)], cwd=Path(tmp))
            staging.rename(cache)
            logger.info("unpacked %s into %s", deb.name, cache)
        except OSError:
            if not root.is_dir():  # another process may have unpacked it meanwhile
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return root


def _parent(cache: Path) -> Path:
    cache.parent.mkdir(parents=True, exist_ok=True)
    return cache.parent


def _run(command: list[str], cwd: Path) -> None:
    try:
        subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except FileNotFoundError as e:
        raise RuntimeError(f"{command[0]} is needed to fetch the held-out photographs ({MATE_PACKAGE})") from e
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"{' '.join(command)} failed: {e.stderr.strip()[-500:]}") from e


def short_side(image: np.ndarray, side: int) -> np.ndarray:
    """``image`` scaled (antialiased) to a short side of ``side`` pixels."""
    scale = side / min(image.shape[:2])
    return resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)))


def mate_photo(root: Path, name: str, side: int) -> Photo:
    """One photograph of the package, short side ``side``."""
    image = cv2.imread(str(root / name), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(root / name)
    return MATE_PREFIX + name, short_side(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), side)


def skimage_photo(name: str, side: int) -> Photo:
    """One of scikit-image's photographs, short side ``side``."""
    return SKIMAGE_PREFIX + name, short_side(bundled_photo(name), side)


def held_out_photos(
    root: Path, side: int, contents: int | None = None, styles: int | None = None
) -> tuple[list[Photo], list[Photo]]:
    """(contents, styles): scikit-image's held-out photos and :data:`MATE_CONTENTS`, and :data:`MATE_STYLES`
    (the first ``contents``/``styles`` of each when given: the quick mode)."""
    names = [SKIMAGE_PREFIX + n for n in HELD_OUT_PHOTOS] + [MATE_PREFIX + n for n in MATE_CONTENTS]
    return [_photo(root, n, side) for n in names[:contents]], [mate_photo(root, n, side) for n in MATE_STYLES[:styles]]


def _photo(root: Path, name: str, side: int) -> Photo:
    if name.startswith(SKIMAGE_PREFIX):
        return skimage_photo(name.removeprefix(SKIMAGE_PREFIX), side)
    return mate_photo(root, name.removeprefix(MATE_PREFIX), side)
