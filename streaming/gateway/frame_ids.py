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

The work per event is bounded (issue 22: 1,024 random announced pts once cost 214 ms of pure Python per decoded
frame): the votes of every (decoded pts, announced pts) pair are kept up to date as pts come and go, instead of
being counted again for each decoded frame. A decoded frame pairs with the newest :data:`VOTE_WINDOW` announced
pts, an announcement with the at most :data:`MAX_UNMATCHED` decoded ones, and the best offset is read from scores
kept in buckets, so a decoded frame costs O(:data:`VOTE_WINDOW`) and an announcement O(:data:`MAX_UNMATCHED`)
whatever the phone announces.
"""

from __future__ import annotations

from collections import OrderedDict
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
VOTE_WINDOW = 2 * MAX_UNMATCHED
"""Newest announced pts the search pairs decoded pts with: the unmatched decoded frames are the newest few dozen,
so their announcements are among the newest ones even with a third of the frames lost on the way."""


def _signed(delta: int) -> int:
    """A difference of two RTP timestamps as a signed number (modular arithmetic)."""
    delta %= RTP_TIMESTAMP_MODULUS
    return delta - RTP_TIMESTAMP_MODULUS if delta >= RTP_TIMESTAMP_MODULUS // 2 else delta


class FrameIdMapper:
    """Learns the pts offset between phone and gateway and maps decoded pts to frame ids."""

    def __init__(self, window: int = DEFAULT_WINDOW, min_votes: int = MIN_VOTES) -> None:
        self._window = window
        self._vote_window = min(window, VOTE_WINDOW)
        self._min_votes = min_votes
        self._by_pts: OrderedDict[int, int] = OrderedDict()  # sender pts mod 2**32 -> frame id
        self._voters: OrderedDict[int, None] = OrderedDict()  # the newest announced pts, as a set in arrival order
        self._newest: int | None = None  # newest announced sender pts
        self._offset: int | None = None
        self._unmatched: list[int] = []  # decoded pts seen while unlocked (at most MAX_UNMATCHED)
        self._votes = _OffsetVotes()  # unmatched x voters
        self._settled_votes = _OffsetVotes()  # unmatched but the newest LOCK_HOLD_BACK x voters
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
        if pts in self._voters:
            return
        self._voters[pts] = None
        self._vote_sent(pts, +1)
        while len(self._voters) > self._vote_window:
            forgotten, _ = self._voters.popitem(last=False)
            self._vote_sent(forgotten, -1)

    def observe(self, received_pts: int) -> None:
        """Record a decoded pts; while no offset is known, search for it."""
        if self._offset is not None:
            return
        received = received_pts % RTP_TIMESTAMP_MODULUS
        if received not in self._unmatched:
            self._unmatched.append(received)
            self._votes.pair(received, self._voters, +1)
            if len(self._unmatched) > LOCK_HOLD_BACK:
                self._settled_votes.pair(self._unmatched[-LOCK_HOLD_BACK - 1], self._voters, +1)
            if len(self._unmatched) > MAX_UNMATCHED:
                oldest = self._unmatched.pop(0)
                self._votes.pair(oldest, self._voters, -1)
                self._settled_votes.pair(oldest, self._voters, -1)
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

    def _vote_sent(self, sent: int, delta: int) -> None:
        """Pair an announced pts with every unmatched decoded pts (``delta`` +1: it came, -1: it is forgotten)."""
        if not self._unmatched:
            return
        self._votes.pair_sent(sent, self._unmatched, delta)
        self._settled_votes.pair_sent(sent, self._unmatched[:-LOCK_HOLD_BACK], delta)

    def _try_lock(self) -> None:
        best = self._votes.best()
        if best is not None and best[1] >= self._min_votes and best[1] >= 2 * best[2]:
            self._lock(best[0])
            return
        settled = len(self._unmatched) - LOCK_HOLD_BACK
        best = self._settled_votes.best() if settled >= self._min_votes else None
        if best is not None and best[1] == settled and best[1] - best[2] >= LOCK_MARGIN:
            self._lock(best[0])

    def _lock(self, offset: int) -> None:
        self._offset = offset
        self._unmatched.clear()
        self._votes = _OffsetVotes()
        self._settled_votes = _OffsetVotes()
        self._misses = 0


class _OffsetVotes:
    """How many (decoded, announced) pairs vote for each offset ``sent - received``, and each voted offset's score
    (the votes within :data:`PTS_TOLERANCE` of it: truncated pts vote one low), kept in buckets by score so that
    the best offset and its runner-up are found without looking at every offset.

    A score is at most ``3 * MAX_UNMATCHED`` (a decoded pts votes once per offset), so finding the top score again
    after a change, or the runner-up, walks down at most that many buckets."""

    def __init__(self) -> None:
        self._votes: dict[int, int] = {}
        self._scores: dict[int, int] = {}  # offsets with a vote of their own -> score
        self._by_score: dict[int, set[int]] = {}
        self._top = 0

    def pair(self, received: int, sent_pts: Iterable[int], delta: int) -> None:
        """Add (``delta`` = 1) or take back (-1) the votes of one decoded pts against ``sent_pts``."""
        for sent in sent_pts:
            self._change((sent - received) % RTP_TIMESTAMP_MODULUS, delta)

    def pair_sent(self, sent: int, received_pts: Iterable[int], delta: int) -> None:
        """Add or take back the votes of one announced pts against ``received_pts``."""
        for received in received_pts:
            self._change((sent - received) % RTP_TIMESTAMP_MODULUS, delta)

    def _change(self, offset: int, delta: int) -> None:
        votes = self._votes.get(offset, 0) + delta
        if votes:
            self._votes[offset] = votes
        else:
            del self._votes[offset]
        for near in range(offset - PTS_TOLERANCE, offset + PTS_TOLERANCE + 1):
            self._rescore(near % RTP_TIMESTAMP_MODULUS)

    def _rescore(self, offset: int) -> None:
        old = self._scores.pop(offset, 0)
        if old:
            bucket = self._by_score[old]
            bucket.discard(offset)
            if not bucket:
                del self._by_score[old]
        if offset not in self._votes:  # only an offset some pair voted for is a candidate
            new = 0
        else:
            new = sum(
                self._votes.get((offset + d) % RTP_TIMESTAMP_MODULUS, 0)
                for d in range(-PTS_TOLERANCE, PTS_TOLERANCE + 1)
            )
            self._scores[offset] = new
            self._by_score.setdefault(new, set()).add(offset)
        if new > self._top:
            self._top = new
        while self._top and self._top not in self._by_score:
            self._top -= 1

    def best(self) -> tuple[int, int, int] | None:
        """(offset, frames it explains, frames the runner-up explains), or None without votes."""
        if not self._top:
            return None
        best = next(iter(self._by_score[self._top]))
        # The runner-up must be a different offset, not a neighbour sharing the best one's votes.
        for score in range(self._top, 0, -1):
            for offset in self._by_score.get(score, ()):
                if abs(_signed(offset - best)) > 2 * PTS_TOLERANCE:
                    return best, self._top, score
        return best, self._top, 0
