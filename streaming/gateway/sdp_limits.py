"""An offer's SDP bounded before aiortc parses it.

aiortc parses and answers an offer on the event loop, and some of its parsing is quadratic: an offer of 20,000
``rtpmap``/``fmtp`` lines took ~30 s, 50,000 ``a=ssrc`` lines 37.8 s, 1,000 bundled m-sections 4.2 s, each with the
gateway's loop (and ``/livez``) silent. A phone's offer is a few kilobytes: a video stream and the data channel,
about a hundred lines (a browser's ~200), a handful of candidates. :func:`screen_sdp` refuses an offer over these
limits (:class:`SdpRefused`, HTTP 400) with a line scan, so what aiortc sees costs it tens of milliseconds at most,
and keeps of its ``a=candidate`` lines only those the :class:`~streaming.ice.RemoteCandidatePolicy` allows, at most
:data:`MAX_REMOTE_CANDIDATES` distinct transport addresses (the gateway sends connectivity checks to each).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import Counter

from streaming.ice import RemoteCandidatePolicy

MAX_SDP_BYTES = 32 * 1024
"""Longest offer SDP (bytes; a browser's is 5-8 KB)."""
MAX_SDP_LINES = 512
"""Most lines in an offer SDP."""
MAX_SDP_MEDIA = 4
"""Most m-sections (the protocol needs two: video and the data channel)."""
MAX_SDP_SSRC_LINES = 64
"""Most ``a=ssrc``/``a=ssrc-group`` lines (aiortc's parsing of them is quadratic; a browser sends ~8)."""
MAX_REMOTE_CANDIDATES = 16
"""Most distinct remote transport addresses kept from an offer's candidates (the rest are dropped)."""
CANDIDATE_PREFIX = "a=candidate:"
CANDIDATE_FIELDS = 8
"""foundation component transport priority address port ``typ`` type"""

CANDIDATES_DROPPED = Counter(
    "mvs_gateway_ice_candidates_dropped_total",
    "Remote ICE candidates of offers dropped before aiortc saw them",
    ["reason"],
)


class SdpRefused(ValueError):
    """An offer SDP over the limits of this module."""


@dataclass
class ScreenedSdp:
    """An offer SDP cut down to what the gateway accepts, and what was dropped from it by reason."""

    sdp: str
    dropped: dict[str, int] = field(default_factory=dict)


def screen_sdp(sdp: str, policy: RemoteCandidatePolicy) -> ScreenedSdp:
    """Check an offer SDP against the limits (:class:`SdpRefused` naming the one exceeded) and drop the candidates
    ``policy`` refuses, malformed ones, and those beyond :data:`MAX_REMOTE_CANDIDATES` addresses."""
    if len(sdp) > MAX_SDP_BYTES or len(sdp.encode()) > MAX_SDP_BYTES:
        raise SdpRefused(f"SDP offer exceeds {MAX_SDP_BYTES} B")
    lines = sdp.splitlines()
    if len(lines) > MAX_SDP_LINES:
        raise SdpRefused(f"SDP offer has {len(lines)} lines, limit {MAX_SDP_LINES}")
    media = sum(1 for line in lines if line.startswith("m="))
    if media > MAX_SDP_MEDIA:
        raise SdpRefused(f"SDP offer has {media} m-sections, limit {MAX_SDP_MEDIA}")
    ssrc = sum(1 for line in lines if line.startswith("a=ssrc"))
    if ssrc > MAX_SDP_SSRC_LINES:
        raise SdpRefused(f"SDP offer has {ssrc} a=ssrc lines, limit {MAX_SDP_SSRC_LINES}")
    kept: list[str] = []
    addresses: set[tuple[str, str, str]] = set()
    dropped: dict[str, int] = {}
    for line in lines:
        if line.startswith(CANDIDATE_PREFIX):
            reason = _refusal(line, policy, addresses)
            if reason is not None:
                dropped[reason] = dropped.get(reason, 0) + 1
                CANDIDATES_DROPPED.labels(reason).inc()
                continue
        kept.append(line)
    return ScreenedSdp("\r\n".join(kept) + "\r\n", dropped)


def _refusal(line: str, policy: RemoteCandidatePolicy, addresses: set[tuple[str, str, str]]) -> str | None:
    """Why a candidate line is dropped (None: kept, its address added to ``addresses``)."""
    parts = line[len(CANDIDATE_PREFIX) :].split()
    if len(parts) < CANDIDATE_FIELDS or not parts[5].isdigit():
        return "malformed"
    address = (parts[2].lower(), parts[4].lower(), parts[5])
    if not policy.allows(parts[4]):
        return "address"
    if address not in addresses:  # a bundled offer repeats its candidates in every m-section
        if len(addresses) >= MAX_REMOTE_CANDIDATES:
            return "too_many"
        addresses.add(address)
    return None
