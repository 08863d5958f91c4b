"""A worker's inference step, on its inference thread: a batch of stylize requests in, one reply each out.

Each request's JPEG is decoded on its own, so a bad image fails only its own request. The rest are grouped by
what they ask for (colour maps, or a frame) and each group goes through the stylizer in one call when it is a
:class:`~edge_worker.model.base.BatchStylizer` (the network runs once for the group), else one call per item.
If a batched call fails, its items are retried one by one, so one bad item cannot fail its neighbours. No
asyncio and no NATS here: the service wraps this.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from edge_worker.model.base import BatchStylizer, CoefficientStylizer, Size, Stylizer
from streaming.coefficients import encode_coefficients
from streaming.images import ImageDecodeError, decode_image, encode_jpeg
from streaming.protocol import (
    MAX_FRAME_SIDE,
    MAX_MESSAGE_BYTES,
    ErrorCode,
    ResultKind,
    Stamp,
    StylizeReply,
    StylizeRequest,
    clip,
)

log = logging.getLogger(__name__)

REPLY_OVERHEAD_BYTES = 4096
"""Room left in a reply for everything but the image."""
WARMUP_SIZE: Size = (640, 360)
"""Frame of the start-up warm-up: 16:9 like the phones' key frames (the DNN runs every 16:9 frame at one size)."""


def error_reply(request: StylizeRequest | None, worker_id: str, code: str, text: str) -> StylizeReply:
    """The reply to a request that failed with ``code`` (its stamps kept, for the latency report)."""
    return StylizeReply(
        stream_id=request.stream_id if request else "",
        frame_id=request.frame_id if request else -1,
        worker_id=worker_id,
        ok=False,
        error_code=code,
        error=clip(text),
        stamps=dict(request.stamps) if request else {},
    )


@dataclass
class Item:
    """One request of a batch with its prepared style."""

    request: StylizeRequest
    style: Any


@dataclass
class _Decoded:
    index: int
    request: StylizeRequest
    style: Any
    content: np.ndarray
    stamps: dict[str, int]

    @property
    def out_size(self) -> Size:
        return (self.request.out_width, self.request.out_height)


class Inference:
    """Runs batches of requests through one stylizer and builds the replies."""

    def __init__(self, stylizer: Stylizer, worker_id: str, jpeg_quality: int) -> None:
        self.stylizer = stylizer
        self.worker_id = worker_id
        self.jpeg_quality = jpeg_quality

    def prepare_style(self, data: bytes) -> Any:
        """Decode a style image (JPEG/PNG bytes) and prepare it for the stylizer, which takes RGB (call it on the
        inference thread: decoding and preparing are heavy)."""
        image = decode_image(data, max_side=MAX_FRAME_SIDE)
        return self.stylizer.prepare_style(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))

    def run(self, items: Sequence[Item]) -> list[StylizeReply]:
        """One reply per item, in order."""
        replies: list[StylizeReply | None] = [None] * len(items)
        maps: list[_Decoded] = []
        frames: list[_Decoded] = []
        for index, item in enumerate(items):
            stamps = dict(item.request.stamps)
            stamps[Stamp.W_START] = time.monotonic_ns()
            try:
                image = decode_image(item.request.image, max_side=MAX_FRAME_SIDE)
            except (ImageDecodeError, ValueError) as exc:
                replies[index] = error_reply(item.request, self.worker_id, ErrorCode.INVALID, str(exc))
                continue
            decoded = _Decoded(index, item.request, item.style, cv2.cvtColor(image, cv2.COLOR_BGR2RGB), stamps)
            wants_maps = item.request.result == ResultKind.COEFFICIENTS
            (maps if wants_maps and isinstance(self.stylizer, CoefficientStylizer) else frames).append(decoded)
        for group, kind in ((maps, ResultKind.COEFFICIENTS), (frames, ResultKind.FRAME)):
            if group:
                for reply_index, reply in self._run_group(group, kind):
                    replies[reply_index] = reply
        assert all(reply is not None for reply in replies)
        return [reply for reply in replies if reply is not None]

    def _run_group(self, group: list[_Decoded], kind: ResultKind) -> list[tuple[int, StylizeReply]]:
        if len(group) > 1 and isinstance(self.stylizer, BatchStylizer):
            batch = self.stylizer.coefficients_batch if kind == ResultKind.COEFFICIENTS else self.stylizer.stylize_batch
            try:
                return self._call(group, kind, batch)
            except Exception:  # retried one by one below, so only the failing item fails
                log.warning("batched call failed; running its items one by one", extra={"items": len(group)})
        return [pair for item in group for pair in self._run_one(item, kind)]

    def _run_one(self, item: _Decoded, kind: ResultKind) -> list[tuple[int, StylizeReply]]:
        stylizer = self.stylizer
        if kind == ResultKind.COEFFICIENTS:
            assert isinstance(stylizer, CoefficientStylizer)

            def single(contents: Sequence[np.ndarray], styles: Sequence[Any], sizes: Sequence[Size]) -> list[Any]:
                return [stylizer.coefficients(contents[0], styles[0], sizes[0])]
        else:

            def single(contents: Sequence[np.ndarray], styles: Sequence[Any], sizes: Sequence[Size]) -> list[Any]:
                return [stylizer.stylize(contents[0], styles[0], sizes[0])]

        try:
            return self._call([item], kind, single)
        except ValueError as exc:
            return [(item.index, error_reply(item.request, self.worker_id, ErrorCode.INVALID, str(exc)))]
        except Exception as exc:  # a worker must survive any single request
            log.exception("stylize failed", extra={"frame_id": item.request.frame_id})
            code, text = ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"
            return [(item.index, error_reply(item.request, self.worker_id, code, text))]

    def _call(
        self,
        group: list[_Decoded],
        kind: ResultKind,
        call: Callable[[Sequence[np.ndarray], Sequence[Any], Sequence[Size]], list[np.ndarray]],
    ) -> list[tuple[int, StylizeReply]]:
        start = time.monotonic_ns()
        outputs = call([d.content for d in group], [d.style for d in group], [d.out_size for d in group])
        end = time.monotonic_ns()
        replies = []
        for decoded, output in zip(group, outputs, strict=True):
            stamps = {**decoded.stamps, Stamp.W_INFER_START: start, Stamp.W_INFER_END: end}
            replies.append((decoded.index, self._reply(decoded.request, kind, output, stamps)))
        return replies

    def _reply(
        self, request: StylizeRequest, kind: ResultKind, output: np.ndarray, stamps: dict[str, int]
    ) -> StylizeReply:
        if kind == ResultKind.COEFFICIENTS:
            payload = encode_coefficients(output)
        else:
            bgr = cv2.cvtColor(output, cv2.COLOR_RGB2BGR)
            payload = encode_jpeg(bgr, self.jpeg_quality, MAX_MESSAGE_BYTES - REPLY_OVERHEAD_BYTES)
        return StylizeReply(
            stream_id=request.stream_id,
            frame_id=request.frame_id,
            worker_id=self.worker_id,
            ok=True,
            image=payload,
            kind=kind,
            stamps=stamps,
        )


def warm_up(stylizer: Stylizer, size: Size = WARMUP_SIZE, batch: int = 1) -> dict[str, float]:
    """Prepare a style and stylize a synthetic frame of ``size`` the way requests do (the frame, then the
    coefficients when the stylizer has them; with ``batch`` > 1 also a full batch of them), so that one-time
    set-up happens now; seconds per step."""
    frame = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    style = stylizer.prepare_style(frame)
    seconds["style"] = time.perf_counter() - start
    start = time.perf_counter()
    stylizer.stylize(frame, style, size)
    seconds["frame"] = time.perf_counter() - start
    if isinstance(stylizer, CoefficientStylizer):
        start = time.perf_counter()
        stylizer.coefficients(frame, style, size)
        seconds["coefficients"] = time.perf_counter() - start
    if batch > 1 and isinstance(stylizer, BatchStylizer) and isinstance(stylizer, CoefficientStylizer):
        start = time.perf_counter()
        stylizer.coefficients_batch([frame] * batch, [style] * batch, [size] * batch)
        seconds["batch"] = time.perf_counter() - start
    return seconds
