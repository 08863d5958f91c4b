"""Which :class:`~streaming.protocol.KeyLatency` reports a gateway believes (issue 22: 17,965 forged 60 s reports
in 10 s once pushed every percentile of the phone-measured latency above 5 s). Pure computation.

A report counts only for a key this session served, once, within :data:`REPORT_WINDOW_S` of the result leaving the
gateway, and each part must agree with what the gateway saw on its own clock (ns below; every bound widened by
the session's slack for the phone's clock estimate and one-way delays):

- ``uplink`` (capture -> decoded here): the frame was captured before its announcement arrived (A) and, the phone
  announcing a frame as it hands it to the encoder, not long before: ``decoded - A`` within the slack;
- ``queue`` and ``inference``: differences of stamps the gateway itself sent the phone in the result header
  (decoded, inference start and end, all on this clock), so they must match them to :data:`EXACT_TOLERANCE_MS`;
- ``downlink`` (inference end -> result decoded on the phone): the phone decoded the result after it left the
  gateway (S) and before its report arrived (R);
- ``round_trip``: capture -> result decoded, so between ``S - A`` and ``R - A``.

A forger can therefore add at most the slack to one key's parts, and report only as many keys as it was served.
"""

from __future__ import annotations

from dataclasses import dataclass

from streaming.protocol import ErrorCode, KeyLatency, ProtocolError, Stamp, Stamps

REPORT_WINDOW_S = 3.0
"""How long after its result left the gateway a key's report is awaited (a phone reports as it decodes it)."""
EXACT_TOLERANCE_MS = 1.0
"""Rounding a part computed from the gateway's own stamps may carry."""
NS_PER_MS = 1e6


@dataclass(frozen=True)
class ServedKey:
    """What the gateway saw of one key it served, on its own monotonic clock (ns)."""

    announced_ns: int
    """Its FrameMeta arrived."""
    decoded_ns: int
    sent_ns: int
    """Its result was handed to the data channel."""
    stamps: Stamps
    """The result header's stamps (worker ones already on this clock)."""


def check_report(report: KeyLatency, key: ServedKey, received_ns: int, slack_ms: float) -> None:
    """Raise :class:`ProtocolError` (code ``invalid``) unless every part of ``report``, which arrived at
    ``received_ns``, lies within what ``key``'s own timing allows (see the module docstring)."""
    if received_ns - key.sent_ns > REPORT_WINDOW_S * 1e9:
        raise ProtocolError(ErrorCode.INVALID, f"latency: report for frame {report.frame_id} came too late")
    stamps = key.stamps
    if Stamp.W_INFER_START not in stamps or Stamp.W_INFER_END not in stamps:
        raise ProtocolError(ErrorCode.INVALID, f"latency: frame {report.frame_id} has no inference stamps here")
    start, end = stamps[Stamp.W_INFER_START], stamps[Stamp.W_INFER_END]
    a, d, s, r = key.announced_ns, key.decoded_ns, key.sent_ns, received_ns
    bounds = {  # part: (lowest, highest) in ns, before the tolerance
        "uplink": (d - a, d - a),
        "queue": (start - d, start - d),
        "inference": (end - start, end - start),
        "downlink": (s - end, r - end),
        "round_trip": (s - a, r - a),
    }
    for part, value in report.parts_ms.items():
        low, high = bounds[part]
        tolerance = EXACT_TOLERANCE_MS if part in ("queue", "inference") else slack_ms
        if not low / NS_PER_MS - tolerance <= value <= high / NS_PER_MS + tolerance:
            raise ProtocolError(
                ErrorCode.INVALID,
                f"latency: {part} of frame {report.frame_id} = {value:.1f} ms, the gateway saw "
                f"{low / NS_PER_MS:.1f}..{high / NS_PER_MS:.1f} ms (+-{tolerance:g})",
            )
