"""Temporal smoothing of the phone's output video: each output frame is blended with the previous output, warped
to it along the flow between their original frames.

A recursive, flow-guided filter in the spirit of blind video temporal consistency (Bonneel et al., SIGGRAPH Asia
2015; Lai et al., ECCV 2018, whose warping error it lowers): ``out_t = w W(out_{t-1}) + (1 - w) render_t`` where
``W`` warps along the flow from original frame t to t-1 and ``w`` is zero at pixels that fail the forward-backward
check (occlusions) or where the warped previous original does not match this one (wrong flow), so new content is
not ghosted; a frame where over ``CUT_SHARE`` of the pixels are such is a cut and passes unchanged. It spreads the
colour jump of a new key (and a stylizer's flicker) over several frames; the price is one flow pair, two remaps
and one blend per frame, and a colour lag of about ``w / (1 - w)`` frames.
"""

from __future__ import annotations

import cv2
import numpy as np

from mobile_sim.flow import FlowEstimator
from mobile_sim.warp import Warper, image_size

MAX_MISMATCH = 20
"""Largest channel difference (of 255) between the warped previous original and this one where frames blend."""
CUT_SHARE = 0.5
"""Above this share of pixels that cannot blend the frame is taken as a cut: it passes unchanged."""


class TemporalFilter:
    """Feed output frames in order with their originals; :meth:`reset` where the output is not a stylization."""

    def __init__(self, flow: FlowEstimator, warper: Warper, weight: float) -> None:
        if not 0.0 < weight < 1.0:
            raise ValueError(f"temporal smoothing weight must be in (0, 1), got {weight}")
        self.weight = weight
        self._flow = flow
        self._warper = warper
        self._previous: tuple[np.ndarray, np.ndarray] | None = None  # (original, filtered output)

    def reset(self) -> None:
        """Forget the previous frame: the next output passes unchanged."""
        self._previous = None

    def __call__(self, original: np.ndarray, output: np.ndarray) -> np.ndarray:
        """The filtered output of this frame (``output`` itself for the first frame or after a size change)."""
        if output.shape != original.shape:
            raise ValueError(f"output {output.shape} and original {original.shape} must have the same shape")
        previous = self._previous
        if previous is None or previous[0].shape != original.shape:
            self._previous = (original, output)
            return output
        previous_original, previous_output = previous
        motion = self._flow.motion(original, previous_original, occlusion=True)
        assert motion.occluded is not None, "asked for the forward-backward check"
        maps = self._warper.maps_from_flow(motion.small_flow, image_size(previous_output), motion.frame_size)
        warped = self._warper.warp(previous_output, maps)
        difference = cv2.split(cv2.absdiff(self._warper.warp(previous_original, maps), original))
        mismatch = cv2.max(cv2.max(difference[0], difference[1]), difference[2]) > MAX_MISMATCH
        unusable = np.logical_or(mismatch, motion.occluded, out=mismatch)
        if np.count_nonzero(unusable) > CUT_SHARE * unusable.size:
            self._previous = (original, output)
            return output
        weight = np.full(output.shape[:2], self.weight, np.float32)
        weight[unusable] = 0.0
        filtered = cv2.blendLinear(warped, output, weight, 1.0 - weight)
        self._previous = (original, filtered)
        return filtered
