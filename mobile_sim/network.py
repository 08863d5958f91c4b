"""The phone's view of its network: an optional emulated link to the edge, and the edge's clock.

:class:`EmulatedLink` puts a :class:`mobile_sim.link_shim.LinkShim` between the phone and the
gateway by rewriting the offer and the answer. :class:`GatewayClock` estimates the gateway's clock
offset from probes on the data channel, so the key-frame latency split holds across hosts.
"""

from __future__ import annotations

from mobile_sim.link_shim import LinkProfile, LinkShim, host_candidates, rewrite_candidates
from streaming.clock import ClockOffset
from streaming.protocol import PHONE_STAMP_PREFIX, ClockPong, Stamps


class EmulatedLink:
    """A delay/bandwidth/loss shim on the phone's path to the edge (emulates a far region)."""

    def __init__(self, profile: LinkProfile) -> None:
        self.shim = LinkShim(profile)
        self._near: tuple[str, int] | None = None

    async def offer(self, sdp: str) -> str:
        """The offer to send: the gateway will know the phone only by the shim's far-facing socket."""
        candidates = host_candidates(sdp)
        if not candidates:
            raise ValueError("the offer has no UDP host candidate to route through the emulated link")
        self._near = candidates[0]
        await self.shim.start()
        return rewrite_candidates(sdp, self.shim.port("far"))

    def answer(self, sdp: str) -> str:
        """The answer to apply: the phone will know the gateway only by the shim's near-facing socket."""
        candidates = host_candidates(sdp)
        if self._near is None or not candidates:
            raise ValueError("the answer has no UDP host candidate to route through the emulated link")
        self.shim.connect(self._near, candidates[0])
        return rewrite_candidates(sdp, self.shim.port("near"))

    def close(self) -> None:
        """Stop relaying."""
        self.shim.close()

    def stats(self) -> dict[str, object]:
        """Profile and datagram counts, for the report."""
        p = self.shim.profile
        return {
            "delay_ms": p.delay_ms,
            "kbps": p.kbps,
            "loss": p.loss,
            "forwarded": dict(self.shim.forwarded),
            "dropped": dict(self.shim.dropped),
        }


class GatewayClock:
    """The gateway's clock as seen from the phone (NTP-style, least-delay probe wins)."""

    def __init__(self) -> None:
        self._offset = ClockOffset()

    def on_pong(self, pong: ClockPong, received_ns: int) -> None:
        """Record a probe's answer received at ``received_ns`` (phone clock)."""
        self._offset.add(pong.phone_ns, pong.gw_received_ns, pong.gw_sent_ns, received_ns)

    def to_phone_clock(self, stamps: Stamps) -> None:
        """Move every non-phone stamp (the gateway forwards worker stamps on its own clock) onto the phone's."""
        for key in [k for k in stamps if not k.startswith(PHONE_STAMP_PREFIX)]:
            stamps[key] = self._offset.to_local(stamps[key])

    def stats(self) -> dict[str, float | None]:
        """Estimated offset and its error bound (half the best probe's round trip), in ms."""
        best = self._offset.best
        if best is None:
            return {"offset_ms": None, "error_bound_ms": None}
        return {"offset_ms": round(best.offset_ns / 1e6, 3), "error_bound_ms": round(best.delay_ns / 2e6, 3)}
