"""Map the pts the gateway decodes back to the phone's own frame ids.

aiortc's receiver re-bases RTP timestamps on the first frame it gets (and the sender adds a random
origin), so a decoded frame's pts is ``(sender_pts - sender_pts_of_first_received) mod 2**32``: a
lost first frame shifts every pts by an unknown constant, and a reordered frame makes aiortc add
``2**32``. The phone announces ``(frame_id, sender_pts)`` of every frame it sends, with pts dithered
so that their spacing is unique; the constant offset is then the one that maps most decoded pts
onto announced ones. Matching tolerates one tick of error: aiortc's VP8 encoder passes pts through
the codec's microsecond time base and truncates, so a pts that is not a multiple of
:data:`streaming.protocol.EXACT_PTS_QUANTUM` comes out one tick low. Pure computation: no asyncio, no I/O.

A browser cannot dither: its pts are its RTP timestamps, capture times in whole milliseconds, so at 30 fps
the spacing repeats 2970, 2970, 3060 ticks with a little jitter. An offset shifted by three frames then
explains nearly as many decoded frames as the true one, and the plain vote (best twice the runner-up) can
wait hundreds of frames when the first frames were lost. So an offset also locks when it explains *every*
recent decoded frame (the newest few held back: their announcements may still be on the way) and beats
every other offset by :data:`LOCK_MARGIN` frames. The true offset always explains all of them and no
offset can explain more, so a wrong one can win only where announcements are missing, and then none
explains all.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterable

from streaming.protocol import RTP_TIMESTAMP_MODULUS

DEFAULT_WINDOW = 1024
"""Announced frames remembered (about 30 s at 30 fps)."""
MIN_VOTES = 3
"""Decoded frames that must agree on an offset before it is trusted (and twice the runner-up)."""
MAX_UNMATCHED = 64
"""Decoded pts kept while searching for the offset."""
PTS_TOLERANCE = 1
"""Ticks a decoded pts may differ from the announced one (see the module docstring)."""
LOCK_HOLD_BACK = 3
"""Newest decoded frames left out of that window: their announcements may not have arrived yet."""
LOCK_MARGIN = 3
"""Frames of the window the best offset must explain beyond any other offset."""
RELOCK_AFTER_MISSES = 30
"""Consecutive decoded frames contradicting the offset before it is searched again."""


def _signed(delta: int) -> int:
    """A difference of two RTP timestamps as a signed number (modular arithmetic)."""
    delta %= RTP_TIMESTAMP_MODULUS
    return delta - RTP_TIMESTAMP_MODULUS if delta >= RTP_TIMESTAMP_MODULUS // 2 else delta


class FrameIdMapper:
    """Learns the pts offset between phone and gateway and maps decoded pts to frame ids."""

    def __init__(self, window: int = DEFAULT_WINDOW, min_votes: int = MIN_VOTES) -> None:
        self._window = window
        self._min_votes = min_votes
        self._by_pts: OrderedDict[int, int] = OrderedDict()  # sender pts mod 2**32 -> frame id
        self._newest: int | None = None  # newest announced sender pts
        self._offset: int | None = None
        self._unmatched: list[int] = []  # decoded pts seen while unlocked (bounded by window)
        self._misses = 0
        self.relocks = 0

    @property
    def locked(self) -> bool:
        """Whether the offset is known."""
        return self._offset is not None

    def announce(self, frame_id: int, pts: int) -> None:
        """Record that the phone sent ``frame_id`` with sender pts ``pts``."""
        pts %= RTP_TIMESTAMP_MODULUS
        self._by_pts[pts] = frame_id
        if self._newest is None or _signed(pts - self._newest) > 0:
            self._newest = pts
        while len(self._by_pts) > self._window:
            self._by_pts.popitem(last=False)

    def observe(self, received_pts: int) -> None:
        """Record a decoded pts; while no offset is known, search for it."""
        if self._offset is not None:
            return
        received = received_pts % RTP_TIMESTAMP_MODULUS
        if received not in self._unmatched:
            self._unmatched.append(received)
            del self._unmatched[:-MAX_UNMATCHED]
        self._try_lock()

    def locate(self, received_pts: int) -> int | None:
        """The frame id of a decoded frame, or None while unknown (not announced yet, or no lock).

        Call :meth:`observe` once per decoded frame first; ``locate`` is safe to call again for the
        same pts once more announcements have arrived.
        """
        if self._offset is None:
            return None
        sent = (received_pts + self._offset) % RTP_TIMESTAMP_MODULUS
        frame_id = self._lookup(sent)
        if frame_id is None:
            if self._newest is not None and _signed(sent - self._newest) > 0:
                return None  # its announcement is still on the way
            self._misses += 1
            if self._misses >= RELOCK_AFTER_MISSES:
                self._offset = None
                self._misses = 0
                self.relocks += 1
        else:
            self._misses = 0
        return frame_id

    def _lookup(self, sent: int) -> int | None:
        for delta in (0, PTS_TOLERANCE, -PTS_TOLERANCE):
            frame_id = self._by_pts.get((sent + delta) % RTP_TIMESTAMP_MODULUS)
            if frame_id is not None:
                return frame_id
        return None

    def _try_lock(self) -> None:
        best = _best_offset(self._unmatched, self._by_pts)
        if best is not None and best[1] >= self._min_votes and best[1] >= 2 * best[2]:
            self._lock(best[0])
            return
        recent = self._unmatched[:-LOCK_HOLD_BACK]
        best = _best_offset(recent, self._by_pts) if len(recent) >= self._min_votes else None
        if best is not None and best[1] == len(recent) and best[1] - best[2] >= LOCK_MARGIN:
            self._lock(best[0])

    def _lock(self, offset: int) -> None:
        self._offset = offset
        self._unmatched.clear()
        self._misses = 0


def _best_offset(received_pts: list[int], sent_pts: Iterable[int]) -> tuple[int, int, int] | None:
    """The offset explaining most ``received_pts``: (offset, frames it explains, frames the runner-up explains)."""
    votes: Counter[int] = Counter()
    for received in received_pts:
        for sent in sent_pts:
            votes[(sent - received) % RTP_TIMESTAMP_MODULUS] += 1
    if not votes:
        return None
    # An offset's score counts its neighbours within the tolerance (truncated pts vote one low).
    scores = Counter(
        {
            offset: sum(
                votes.get((offset + d) % RTP_TIMESTAMP_MODULUS, 0) for d in range(-PTS_TOLERANCE, PTS_TOLERANCE + 1)
            )
            for offset in votes
        }
    )
    (best, count), *rest = scores.most_common()
    # The runner-up must be a different offset, not a neighbour sharing the best one's votes.
    runner_up = next((c for o, c in rest if abs(_signed(o - best)) > 2 * PTS_TOLERANCE), 0)
    return best, count, runner_up
