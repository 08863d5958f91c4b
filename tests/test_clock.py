"""Clock-offset estimation (NTP on-wire maths) against exchanges with known offset and delays."""

from __future__ import annotations

import random

from streaming.clock import ClockOffset, offset_sample

MS = 1_000_000


def _exchange(offset: int, uplink: int, service: int, downlink: int, t0: int = 10 * MS) -> tuple[int, int, int, int]:
    t1 = t0 + uplink + offset
    t2 = t1 + service
    t3 = t2 - offset + downlink
    return t0, t1, t2, t3


def test_symmetric_delay_gives_the_exact_offset() -> None:
    sample = offset_sample(*_exchange(offset=7 * MS, uplink=3 * MS, service=5 * MS, downlink=3 * MS))
    assert sample.offset_ns == 7 * MS and sample.delay_ns == 6 * MS


def test_asymmetry_error_is_bounded_by_half_the_delay() -> None:
    sample = offset_sample(*_exchange(offset=-40 * MS, uplink=9 * MS, service=1 * MS, downlink=1 * MS))
    assert abs(sample.offset_ns - (-40 * MS)) <= sample.delay_ns / 2


def test_least_delay_sample_wins_and_converts_remote_stamps() -> None:
    clock = ClockOffset()
    assert clock.to_local(123) == 123  # nothing known yet
    rng = random.Random(1)
    true_offset = 250 * MS
    for _ in range(30):  # queueing jitter in both directions, one quiet exchange
        clock.add(*_exchange(true_offset, rng.randint(2, 60) * MS, 1 * MS, rng.randint(2, 60) * MS))
    clock.add(*_exchange(true_offset, 1 * MS, 1 * MS, 1 * MS))
    assert clock.best is not None and abs(clock.best.offset_ns - true_offset) < 1
    remote = 5_000 * MS
    assert clock.to_local(remote) == remote - true_offset


def test_gateway_moves_worker_stamps_onto_its_own_clock() -> None:
    from streaming.gateway.stylize_client import to_gateway_clock
    from streaming.protocol import StylizeReply

    skew = 3_600_000 * MS  # the worker's host booted an hour earlier
    gw_sent, nats_hop = 100 * MS, 1 * MS
    worker = {
        "w_received": gw_sent + nats_hop,
        "w_infer_start": gw_sent + 3 * MS,
        "w_infer_end": gw_sent + 40 * MS,
        "w_sent": gw_sent + 42 * MS,
    }
    stamps = {
        "phone_capture": 20 * MS,
        "gw_sent": gw_sent,
        **{k: v + skew for k, v in worker.items()},
        "gw_reply": gw_sent + 42 * MS + nats_hop,
    }
    reply = StylizeReply(stream_id="s", frame_id=1, worker_id="w1", ok=True, stamps=stamps)
    clocks: dict[str, ClockOffset] = {}
    to_gateway_clock(reply, clocks)
    assert clocks["w1"].best is not None and clocks["w1"].best.offset_ns == skew
    assert {k: reply.stamps[k] for k in worker} == worker
    assert reply.stamps["phone_capture"] == 20 * MS  # other clocks' stamps are not touched here


def test_phone_moves_gateway_stamps_onto_its_clock() -> None:
    from mobile_sim.network import GatewayClock
    from streaming.protocol import ClockPong

    clock = GatewayClock()
    assert clock.stats() == {"offset_ms": None, "error_bound_ms": None}
    skew = -77 * MS  # the gateway's clock reads 77 ms behind the phone's
    t0 = 1_000 * MS
    clock.on_pong(
        ClockPong(phone_ns=t0, gw_received_ns=t0 + 5 * MS + skew, gw_sent_ns=t0 + 6 * MS + skew), t0 + 11 * MS
    )
    stamps = {"phone_capture": 900 * MS, "gw_decoded": 950 * MS + skew, "w_infer_end": 990 * MS + skew}
    clock.to_phone_clock(stamps)
    assert stamps == {"phone_capture": 900 * MS, "gw_decoded": 950 * MS, "w_infer_end": 990 * MS}
    assert clock.stats() == {"offset_ms": -77.0, "error_bound_ms": 5.0}
