"""The key frames a worker served, kept on disk (bounded, oldest out) for retraining when idle.

Each entry is one file ``<sequence>-<style id>.jpg`` written atomically (temp file + rename), so a
crash never leaves a torn entry and the buffer survives restarts.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

ENTRY = re.compile(r"^(\d{12})-([0-9a-f]+)\.jpg$")
DEFAULT_CAPACITY = 512


@dataclass(frozen=True)
class BufferedFrame:
    """One stored key frame."""

    path: Path
    style_id: str


class KeyFrameBuffer:
    """Bounded FIFO of served key frames on disk."""

    def __init__(self, directory: Path, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.directory = directory
        self.capacity = capacity
        directory.mkdir(parents=True, exist_ok=True)
        self._entries = sorted(p for p in directory.iterdir() if ENTRY.match(p.name))
        self._next = int(ENTRY.match(self._entries[-1].name).group(1)) + 1 if self._entries else 0  # type: ignore[union-attr]

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, content_jpeg: bytes, style_id: str) -> None:
        """Store a key frame with the id of the style it was stylized with; drop the oldest beyond capacity."""
        if not re.fullmatch(r"[0-9a-f]+", style_id):
            raise ValueError(f"style id must be hex, got {style_id!r}")
        path = self.directory / f"{self._next:012d}-{style_id}.jpg"
        fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(content_jpeg)
        os.replace(tmp, path)
        self._next += 1
        self._entries.append(path)
        while len(self._entries) > self.capacity:
            self._entries.pop(0).unlink(missing_ok=True)

    def discard(self, frame: BufferedFrame) -> None:
        """Forget a stored frame that can no longer be trained on (and delete its file)."""
        if frame.path in self._entries:
            self._entries.remove(frame.path)
        frame.path.unlink(missing_ok=True)

    def sample(self, count: int, rng: random.Random) -> list[BufferedFrame]:
        """Up to ``count`` distinct stored frames, uniformly at random."""
        chosen = rng.sample(self._entries, min(count, len(self._entries)))
        return [BufferedFrame(p, ENTRY.match(p.name).group(2)) for p in chosen]  # type: ignore[union-attr]
