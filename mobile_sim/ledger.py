"""The phone's key-frame ledger: which key frames are in flight, and how each one ended.

A key frame is marked when it is captured and its timeout starts when it is sent. It is settled
exactly once, by whichever comes first: its result (ok, or undecodable on the phone), a failure
the gateway reports, a drop before send, or the phone's own timeout. Anything after that is late.
The ledger holds the :class:`KeyRecord` s the report is built from; it knows nothing of the network
or of the reconstruction: a failure is passed on through ``on_failed``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from mobile_sim.report import KeyRecord
from streaming.protocol import ErrorCode, KeyResult

log = logging.getLogger(__name__)

WATCHDOG_PERIOD_S = 0.1
"""How often the ledger looks for keys past their timeout."""
LATE_OR_UNKNOWN = "late_or_unknown_results"
"""Counter: results for keys already settled, or never marked."""


class KeyLedger:
    """Key frames in flight, their timeouts and their settlement (event-loop side, except where noted).

    ``on_failed(frame_id, code)`` is called once for each key that fails, whatever the cause.
    """

    def __init__(self, result_timeout_s: float, on_failed: Callable[[int, str], None]) -> None:
        self.records: dict[int, KeyRecord] = {}
        """Every key frame marked, by frame id: what the report needs."""
        self.counters: dict[str, int] = {}
        self._timeout_s = result_timeout_s
        self._on_failed = on_failed
        self._deadlines: dict[int, float] = {}  # key frame id -> monotonic deadline, while in flight
        self._settled: set[int] = set()

    def mark(self, frame_id: int) -> None:
        """A key frame was captured."""
        self.records[frame_id] = KeyRecord(frame_id=frame_id)

    def sent(self, frame_id: int) -> None:
        """The key frame went out: it fails if nothing settles it within the result timeout."""
        self._deadlines[frame_id] = time.monotonic() + self._timeout_s

    def claim(self, frame_id: int) -> bool:
        """A key's result arrived: True if it settles the key, False (counted) if late or unknown."""
        if frame_id in self._settled or frame_id not in self.records:
            self.counters[LATE_OR_UNKNOWN] = self.counters.get(LATE_OR_UNKNOWN, 0) + 1
            return False
        self._settled.add(frame_id)
        self._deadlines.pop(frame_id, None)
        return True

    def fail(self, frame_id: int, code: str, text: str, attempts: int = 0) -> None:
        """Settle the key as failed, unless it is unknown or already settled."""
        record = self.records.get(frame_id)
        self._deadlines.pop(frame_id, None)
        if record is None or frame_id in self._settled:
            return
        self._settled.add(frame_id)
        record.error_code, record.error, record.attempts = code, text, attempts
        log.info("key frame failed", extra={"frame_id": frame_id, "code": code, "error": text})
        self._on_failed(frame_id, code)

    def fail_in_flight(self, code: str, text: str) -> int:
        """Settle every key sent and not answered as failed (their gateway is gone); return how many."""
        in_flight = list(self._deadlines)
        for frame_id in in_flight:
            self.fail(frame_id, code, text)
        return len(in_flight)

    def succeeded(self, result: KeyResult, size: int) -> None:
        """A claimed key's result was decoded (any thread: touches only its record)."""
        record = self.records[result.frame_id]
        record.ok, record.attempts, record.worker_id = True, result.attempts, result.worker_id
        record.bytes, record.stamps = size, result.stamps

    def undecodable(self, frame_id: int, error: str) -> None:
        """A claimed key's result could not be decoded (any thread: touches only its record)."""
        record = self.records[frame_id]
        record.error_code, record.error = ErrorCode.INVALID, error

    def expire(self, now: float) -> None:
        """Fail every key in flight past its deadline at monotonic time ``now``."""
        for frame_id, deadline in list(self._deadlines.items()):
            if now > deadline:
                self.fail(frame_id, ErrorCode.TIMEOUT, "no result before the phone's timeout")

    async def watch(self) -> None:
        """Expire keys every :data:`WATCHDOG_PERIOD_S` until cancelled."""
        while True:
            await asyncio.sleep(WATCHDOG_PERIOD_S)
            self.expire(time.monotonic())
