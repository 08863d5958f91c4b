"""The simulated phone: captures, streams over WebRTC, and rebuilds the stylized video live.

Capture runs at ``fps`` on the event loop and never waits for the network or for heavy work:
frames go to the video track through a latest-wins queue (frames the encoder could not take are
counted), and to the :class:`Reconstructor` on one "phone CPU" thread, which computes optical
flow at capture time so that a stylized key frame only costs a remap per frame when it arrives.
Every frame announced on the data channel carries its frame id and a dithered pts, from which the
gateway recovers frame ids even when frames are lost (see ``streaming.gateway.frame_ids``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription

from mobile_sim.flow import DEFAULT_METHOD, FlowEstimator, MotionProbe
from mobile_sim.keyframes import (
    DEFAULT_KEY_POLICY,
    DEFAULT_MAX_INTERVAL,
    DEFAULT_MIN_INTERVAL,
    KeyDecision,
    KeyFramePolicy,
    make_policy,
)
from mobile_sim.link_shim import LinkProfile
from mobile_sim.network import EmulatedLink, GatewayClock
from mobile_sim.reconstruct import IntermediateRender, OutputFrame, ReconstructionMode, Reconstructor
from mobile_sim.recorder import VideoRecorder
from mobile_sim.report import FrameRecord, KeyRecord, build_report, write_report
from mobile_sim.sources import FrameSource, default_style_photo, open_source
from mobile_sim.warp import Warper
from streaming.coefficients import decode_coefficients
from streaming.ice import restrict_host_candidates, rtc_configuration
from streaming.images import ImageDecodeError, decode_image, encode_jpeg
from streaming.protocol import (
    DATA_CHANNEL_LABEL,
    DEFAULT_REGION,
    EXACT_PTS_QUANTUM,
    VIDEO_CLOCK_RATE,
    Chunk,
    ChunkAssembler,
    ClockPing,
    ClockPong,
    ErrorCode,
    FrameMeta,
    KeyResult,
    Offer,
    ProtocolError,
    ResultKind,
    Stamp,
    decode_answer,
    decode_any,
    encode,
    encode_offer,
)
from streaming.queues import LatestQueue

log = logging.getLogger(__name__)

DEFAULT_GATEWAY_URL = "http://127.0.0.1:8080"
DEFAULT_FRAMES = 150
DEFAULT_SIZE = (640, 360)
DEFAULT_FPS = 30.0
DEFAULT_KEY_INTERVAL = 5
DEFAULT_RESULT_TIMEOUT_MS = 3000.0
WAITING_FRAMES_SLACK = 8
"""Frames beyond (result timeout x fps + key interval) the phone may hold before it gives up on the oldest."""
SEND_QUEUE_FRAMES = 2
"""Frames waiting for the video encoder; when it lags, the oldest intermediate frame is dropped (and
counted) first: the phone rebuilds intermediate frames itself, key frames are what the edge needs."""
PTS_DITHER_FRACTION = 0.5
"""Sender pts are frame_id * period + a random offset below this share of the period."""
CONNECT_TIMEOUT_S = 15.0
FINISH_GRACE_S = 2.0
WATCHDOG_PERIOD_S = 0.1
CLOCK_PROBES_AT_START = 5
CLOCK_PROBE_PERIOD_S = 1.0
"""Clock probes to the gateway: a burst at connect, then one a second (the least-delay one counts)."""
STYLE_JPEG_QUALITY = 95


@dataclass
class PhoneConfig:
    """Settings of one simulated phone run."""

    gateway_url: str = DEFAULT_GATEWAY_URL
    source: str = "synthetic"
    style: str | None = None
    """Path of the style image; None: the bundled default style photo."""
    frames: int = DEFAULT_FRAMES
    size: tuple[int, int] = DEFAULT_SIZE
    fps: float = DEFAULT_FPS
    key_interval: int = DEFAULT_KEY_INTERVAL
    """The fixed policy's interval."""
    key_policy: str = DEFAULT_KEY_POLICY
    """One of mobile_sim.keyframes.KEY_POLICIES."""
    min_key_interval: int = DEFAULT_MIN_INTERVAL
    max_key_interval: int = DEFAULT_MAX_INTERVAL
    """Bounds of the policies other than fixed."""
    flow: str = DEFAULT_METHOD
    """One of mobile_sim.flow.FLOW_METHODS."""
    mode: ReconstructionMode = "live"
    """live: warp from the previous key; buffered: wait for the next key too and blend."""
    fill_occlusions: bool = True
    """Fill pixels failing the forward-backward check from the key's colour map (one more flow per frame)."""
    render: IntermediateRender = "warp"
    """warp: warp the stylized key; affine / affine-flow: ask the edge for the stylizer's colour maps instead of
    the stylized key and apply them to every frame (affine-flow moves them along the flow first; live mode)."""
    temporal_smoothing: float = 0.0
    """Weight of the previous output, warped along the flow, in each output frame (mobile_sim.temporal); 0: off."""
    out_dir: Path | None = None
    """Where videos and report.json go; None: nothing written (the run's report is still returned)."""
    link: LinkProfile | None = None
    """Emulated network link to the edge (delay, bandwidth, loss), e.g. for a far region; None: direct."""
    region: str = DEFAULT_REGION
    """The region this phone's gateway serves (a label in the report)."""
    ice_hosts: tuple[str, ...] = ()
    result_timeout_ms: float = DEFAULT_RESULT_TIMEOUT_MS
    """A key frame with no outcome after this long counts as failed."""
    lose_frames: frozenset[int] = frozenset()
    """Frame ids announced but never sent: emulated network loss (tests, experiments)."""
    keep_frames: bool = False
    """Keep originals and outputs in the result (tests)."""
    seed: int = 0


@dataclass
class PhoneResult:
    """What a run produced."""

    report: dict[str, Any]
    originals: dict[int, np.ndarray] = field(default_factory=dict)
    outputs: dict[int, OutputFrame] = field(default_factory=dict)
    stylized_keys: dict[int, np.ndarray] = field(default_factory=dict)


@dataclass
class _Outgoing:
    frame_id: int
    image: np.ndarray
    key: bool
    capture_ns: int


class CameraTrack(MediaStreamTrack):
    """Video track fed by the capture loop; announces each frame on the data channel as it is sent."""

    kind = "video"

    def __init__(self, phone: Phone) -> None:
        super().__init__()
        self._phone = phone

    async def recv(self) -> av.VideoFrame:
        """Next frame for the encoder (skipping frames the run is told to lose)."""
        while True:
            item = await self._phone.send_queue.get()
            pts = self._phone.pts_of(item.frame_id)
            self._phone.announce(FrameMeta(frame_id=item.frame_id, pts=pts, key=item.key, capture_ns=item.capture_ns))
            if item.frame_id in self._phone.config.lose_frames:
                self._phone.frames[item.frame_id].fate = "lost"
                continue
            frame = av.VideoFrame.from_ndarray(item.image, format="bgr24")
            frame.pts = pts
            frame.time_base = Fraction(1, VIDEO_CLOCK_RATE)
            return frame


class Phone:
    """One run of the simulated phone against a gateway."""

    def __init__(self, config: PhoneConfig, policy: KeyFramePolicy | None = None) -> None:
        if config.frames < 1:
            raise ValueError(f"frames must be >= 1, got {config.frames}")
        if config.fps <= 0:
            raise ValueError(f"fps must be > 0, got {config.fps}")
        self.config = config
        self.policy = (
            policy
            if policy is not None
            else make_policy(config.key_policy, config.key_interval, config.min_key_interval, config.max_key_interval)
        )
        self.send_queue: LatestQueue[_Outgoing] = LatestQueue(SEND_QUEUE_FRAMES, precious=lambda item: item.key)
        self.frames: dict[int, FrameRecord] = {}
        self.keys: dict[int, KeyRecord] = {}
        self._period = VIDEO_CLOCK_RATE / config.fps
        rng = random.Random(config.seed)
        self._dither = [int(rng.random() * PTS_DITHER_FRACTION * self._period) for _ in range(config.frames)]
        self._compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="phone-cpu")
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="phone-io")
        self._recording = ThreadPoolExecutor(max_workers=1, thread_name_prefix="phone-recorder")
        # Frames wait at most for their key's outcome (buffered: and the next key's): a bounded window
        # (each costs ~9 B/pixel).
        interval = config.key_interval if config.key_policy == DEFAULT_KEY_POLICY else config.max_key_interval
        intervals = 2 if config.mode == "buffered" else 1
        max_waiting = int(config.result_timeout_ms / 1000.0 * config.fps) + intervals * interval + WAITING_FRAMES_SLACK
        self._reconstructor = Reconstructor(
            FlowEstimator(config.flow),
            Warper(),
            max_frames=max_waiting,
            mode=config.mode,
            occlusion_check=config.fill_occlusions or self.policy.needs_occlusion,
            fill_occlusions=config.fill_occlusions,
            render=config.render,
            temporal_weight=config.temporal_smoothing,
        )
        self._assembler = ChunkAssembler()
        self._link = EmulatedLink(config.link) if config.link is not None else None
        self.gateway_clock = GatewayClock()
        self._channel: Any = None
        self._originals: dict[int, np.ndarray] = {}
        self._outstanding: dict[int, float] = {}  # key frame id -> monotonic deadline
        self._recorder: VideoRecorder | None = None
        self._result = PhoneResult(report={})
        self._output_count = 0
        self._all_output = asyncio.Event()
        self._captured = 0
        self._capture_done = False
        self._counters: dict[str, int] = {}
        self._work: set[asyncio.Future[None]] = set()
        self._settled: set[int] = set()  # key frames whose outcome is decided (event-loop side)
        self._last_key = 0
        self._first_capture = self._last_output = 0.0

    # --- helpers used by the track -------------------------------------------------------
    def pts_of(self, frame_id: int) -> int:
        """Sender pts (90 kHz) of a frame: regular spacing plus a per-frame dither, on the exact grid."""
        pts = int(frame_id * self._period) + self._dither[frame_id]
        return pts - pts % EXACT_PTS_QUANTUM

    def announce(self, meta: FrameMeta) -> None:
        """Tell the gateway which frame is about to be sent."""
        if self._channel is not None and self._channel.readyState == "open":
            self._channel.send(encode(meta))
        if meta.key:
            self._outstanding[meta.frame_id] = time.monotonic() + self.config.result_timeout_ms / 1000.0

    def _count(self, what: str) -> None:
        self._counters[what] = self._counters.get(what, 0) + 1

    # --- run ------------------------------------------------------------------------------
    async def run(self) -> PhoneResult:
        """Connect, stream every frame, wait for all outputs, write the report; return the result."""
        cfg = self.config
        if cfg.ice_hosts:
            restrict_host_candidates(cfg.ice_hosts)
        source = open_source(cfg.source, cfg.size, cfg.fps, cfg.frames)
        style_bytes = self._style_bytes()
        if cfg.out_dir is not None:
            self._recorder = VideoRecorder(cfg.out_dir, source.size, source.fps)
        pc = RTCPeerConnection(rtc_configuration())
        try:
            await self._connect(pc, style_bytes)
            watchdog = asyncio.create_task(self._watchdog())
            await self._capture(source)
            try:
                await asyncio.wait_for(self._all_output.wait(), cfg.result_timeout_ms / 1000.0 + FINISH_GRACE_S)
            finally:
                watchdog.cancel()
            await asyncio.gather(*self._work)
        finally:
            source.close()
            await pc.close()
            self._compute.shutdown(wait=True)
            self._io.shutdown(wait=True)
            self._recording.shutdown(wait=True)  # every submitted frame is written before the files close
            if self._recorder is not None:
                self._recorder.close()
            if self._link is not None:
                self._link.close()
        return self._finish(source)

    def _style_bytes(self) -> bytes:
        if self.config.style is None:
            return encode_jpeg(default_style_photo(), STYLE_JPEG_QUALITY)
        path = Path(self.config.style)
        if not path.is_file():
            raise FileNotFoundError(f"style image {path} does not exist")
        data = path.read_bytes()
        decode_image(data)  # fail here, with the path in view, rather than at the gateway
        return data

    async def _connect(self, pc: RTCPeerConnection, style: bytes) -> None:
        channel = pc.createDataChannel(DATA_CHANNEL_LABEL, ordered=True)
        opened = asyncio.Event()
        channel.on("open", opened.set)
        channel.on("message", self._on_message)
        self._channel = channel
        pc.addTrack(CameraTrack(self))
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        offer = Offer(
            sdp=await self._link.offer(sdp) if self._link is not None else sdp,
            style=style,
            result=ResultKind.FRAME if self.config.render == "warp" else ResultKind.COEFFICIENTS,
        )
        async with aiohttp.ClientSession() as http:
            headers = {"Content-Type": "application/json"}
            async with http.post(f"{self.config.gateway_url}/offer", data=encode_offer(offer), headers=headers) as response:
                body = await response.read()
                if response.status != 200:
                    raise ConnectionError(f"gateway refused the offer ({response.status}): {body[:200]!r}")
        answer = decode_answer(body)
        sdp_answer = self._link.answer(answer.sdp) if self._link is not None else answer.sdp
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp_answer, type="answer"))
        await asyncio.wait_for(opened.wait(), CONNECT_TIMEOUT_S)
        for _ in range(CLOCK_PROBES_AT_START):
            self._probe_clock()
        log.info("phone connected", extra={"stream_id": answer.stream_id, "gateway": self.config.gateway_url})

    async def _capture(self, source: FrameSource) -> None:
        loop = asyncio.get_running_loop()
        start = self._first_capture = time.monotonic()
        for frame_id in range(self.config.frames):
            await asyncio.sleep(max(0.0, start + frame_id / self.config.fps - time.monotonic()))
            image = await loop.run_in_executor(self._io, source.read)
            if image is None:
                break
            capture_ns = time.monotonic_ns()
            if self.policy.looks_at_frames:  # pixels or flow: off the loop, sharing the flow with the warp
                probe, decision = await loop.run_in_executor(self._compute, self._decide, frame_id, image)
            else:  # counting frames: decided at once, capture never waits for the phone's compute backlog
                probe, decision = None, self.policy.decide(frame_id, image)
            key_id = frame_id if decision.is_key else self._last_key
            if decision.is_key:
                self._last_key = frame_id
                self.keys[frame_id] = KeyRecord(frame_id=frame_id)
            self.frames[frame_id] = FrameRecord(frame_id, capture_ns, decision.is_key, decision.reason, key_id)
            self._originals[frame_id] = image
            self._captured += 1
            self._submit(self._reconstructor.add_frame, frame_id, image, key_id, probe)
            dropped = self.send_queue.put(_Outgoing(frame_id, image, decision.is_key, capture_ns))
            if dropped is not None:
                self.frames[dropped.frame_id].fate = "dropped_before_send"
                if dropped.key:
                    self._policy_call(self.policy.request_key, "key frame dropped before send")
                    self._fail_key(dropped.frame_id, ErrorCode.DROPPED, "encoder busy: dropped before send")
        self._submit(self._reconstructor.finish)
        self._capture_done = True
        self._check_done()

    def _policy_call(self, fn: Any, *args: Any) -> None:
        """Call the policy on the thread its decide() runs on, so its state is never shared between threads."""
        if self.policy.looks_at_frames:
            self._compute.submit(fn, *args)
        else:
            fn(*args)

    def _decide(self, frame_id: int, image: np.ndarray) -> tuple[MotionProbe | None, KeyDecision]:
        """Key-frame decision on the phone CPU thread, with the motion the reconstructor reuses."""
        probe = self._reconstructor.probe(image)
        return probe, self.policy.decide(frame_id, image, probe)

    # --- results --------------------------------------------------------------------------
    def _on_message(self, data: bytes | str) -> None:
        try:
            if isinstance(data, str):
                raise ProtocolError(ErrorCode.MALFORMED, "text message on a binary channel")
            message = decode_any(data, (KeyResult, Chunk, ClockPong))
            if isinstance(message, ClockPong):
                self.gateway_clock.on_pong(message, time.monotonic_ns())
                return
            if isinstance(message, KeyResult):
                if not message.ok:
                    self._fail_key(message.frame_id, message.error_code, message.error, message.attempts)
                elif message.chunks > 0:
                    self._assembler.start(message)
                return
            assert isinstance(message, Chunk)
            complete = self._assembler.add(message)
        except ProtocolError as exc:
            self._count("bad_messages")
            log.warning("bad message from gateway", extra={"error": str(exc)})
            return
        if complete is not None:
            header, payload = complete
            header.stamps[Stamp.PHONE_RECEIVED] = time.monotonic_ns()
            self.gateway_clock.to_phone_clock(header.stamps)  # gateway and worker hops onto the phone's clock
            if header.frame_id in self._settled or header.frame_id not in self.keys:
                self._count("late_or_unknown_results")
                return
            self._settled.add(header.frame_id)
            self._outstanding.pop(header.frame_id, None)
            task = asyncio.ensure_future(self._decode_and_accept(header, payload))
            self._work.add(task)
            task.add_done_callback(self._work.discard)

    async def _decode_and_accept(self, header: KeyResult, payload: bytes) -> None:
        """Decode a key's result on the I/O thread (not behind the flow backlog), then hand it over."""
        decoder = decode_coefficients if header.kind == ResultKind.COEFFICIENTS else decode_image
        try:
            result: np.ndarray | None = await asyncio.get_running_loop().run_in_executor(self._io, decoder, payload)
            error = ""
        except (ImageDecodeError, ProtocolError) as exc:
            result, error = None, f"undecodable {header.kind} result: {exc}"
        header.stamps[Stamp.PHONE_DECODED] = time.monotonic_ns()
        self._submit(self._accept_key, header, len(payload), result, error)

    def _accept_key(self, header: KeyResult, size: int, result: np.ndarray | None, error: str) -> list[OutputFrame]:
        """Rebuild what waits on a key's stylized frame or colour maps (phone CPU thread)."""
        record = self.keys[header.frame_id]
        if result is None:
            record.error_code, record.error = ErrorCode.INVALID, error
            self._reconstructor.key_failed(header.frame_id, record.error)
            return self._reconstructor.pop_ready()
        record.ok, record.attempts, record.worker_id = True, header.attempts, header.worker_id
        record.bytes, record.stamps = size, header.stamps
        if header.kind == ResultKind.COEFFICIENTS:
            stylized = self._reconstructor.add_coefficients(header.frame_id, result)
        else:
            stylized = result
            self._reconstructor.add_stylized(header.frame_id, stylized)
        if self.config.keep_frames and stylized is not None:
            self._result.stylized_keys[header.frame_id] = stylized
        return self._reconstructor.pop_ready()

    def _fail_key(self, frame_id: int, code: str, text: str, attempts: int = 0) -> None:
        record = self.keys.get(frame_id)
        self._outstanding.pop(frame_id, None)
        if record is None or frame_id in self._settled:
            return
        self._settled.add(frame_id)
        record.error_code, record.error, record.attempts = code, text, attempts
        log.info("key frame failed", extra={"frame_id": frame_id, "code": code, "error": text})
        self._submit(self._reconstructor.key_failed, frame_id, code)

    def _probe_clock(self) -> None:
        """Ask the gateway for its clock (the answer updates :attr:`gateway_clock`)."""
        if self._channel is not None and self._channel.readyState == "open":
            self._channel.send(encode(ClockPing(phone_ns=time.monotonic_ns())))

    async def _watchdog(self) -> None:
        last_probe = time.monotonic()
        while True:
            await asyncio.sleep(WATCHDOG_PERIOD_S)
            now = time.monotonic()
            if now - last_probe >= CLOCK_PROBE_PERIOD_S:
                self._probe_clock()
                last_probe = now
            for frame_id, deadline in list(self._outstanding.items()):
                if now > deadline:
                    self._fail_key(frame_id, ErrorCode.TIMEOUT, "no result before the phone's timeout")

    def _submit(self, fn: Any, *args: Any) -> None:
        """Run ``fn`` on the phone CPU thread (in submission order), then output what became ready."""
        loop = asyncio.get_running_loop()

        def call() -> list[OutputFrame]:
            result = fn(*args)
            return result if isinstance(result, list) else self._reconstructor.pop_ready()

        future: Future[list[OutputFrame]] = self._compute.submit(call)
        task = asyncio.ensure_future(self._emit(asyncio.wrap_future(future, loop=loop)))
        self._work.add(task)
        task.add_done_callback(self._work.discard)

    async def _emit(self, ready: asyncio.Future[list[OutputFrame]]) -> None:
        """Hand out frames that became ready. Never yields between frames: emits happen in frame order."""
        outputs = await ready
        for out in outputs:
            original = self._originals.pop(out.frame_id)
            self.frames[out.frame_id].output = out.kind
            if self.config.keep_frames:
                self._result.originals[out.frame_id] = original
                self._result.outputs[out.frame_id] = out
            if self._recorder is not None:
                self._recording.submit(self._recorder.write, original, out.image)
            self._output_count += 1
            self._last_output = time.monotonic()
        self._check_done()

    def _check_done(self) -> None:
        if self._capture_done and self._output_count >= self._captured:
            self._all_output.set()

    def _finish(self, source: FrameSource) -> PhoneResult:
        cfg = self.config
        duration = max(0.0, self._last_output - self._first_capture)
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
        settings["lose_frames"] = sorted(cfg.lose_frames)
        settings["size"] = list(source.size)
        counters = {
            **self._counters,
            "send_queue_dropped": self.send_queue.dropped,
            "chunks_discarded": self._assembler.discarded,
            **self._reconstructor.stats,
        }
        report = build_report(
            region=cfg.region,
            settings=settings,
            frames=[self.frames[i] for i in sorted(self.frames)],
            keys=self.keys,
            duration_s=duration,
            counters=counters,
        )
        report["network"] = {
            "link": self._link.stats() if self._link is not None else None,
            "gateway_clock": self.gateway_clock.stats(),
        }
        if cfg.out_dir is not None:
            write_report(report, cfg.out_dir / "report.json")
        self._result.report = report
        return self._result


async def run_phone(config: PhoneConfig) -> PhoneResult:
    """Run one simulated phone to the end of its source."""
    return await Phone(config).run()
