"""The phone simulator: frame sources, key-frame policies, optical flow, warping and reconstruction."""
