"""The simulated phone: captures, streams over WebRTC, and rebuilds the stylized video live.

Capture runs at ``fps`` on the event loop and never waits for the network or for heavy work:
frames go to the video track through a latest-wins queue (frames the encoder could not take are
counted), and to the :class:`Reconstructor` on one "phone CPU" thread, which computes optical
flow at capture time so that a stylized key frame only costs a remap per frame when it arrives.
Every frame announced on the data channel carries its frame id and a dithered pts, from which the
gateway recovers frame ids even when frames are lost (see ``streaming.gateway.frame_ids``).

:class:`Phone` is that capture -> reconstruct -> emit loop. It wires two parts by callbacks: the
link to the gateway (``mobile_sim.link``: peer connection, data channel, chunk reassembly, clock
probes) and the key-frame ledger (``mobile_sim.ledger``: keys in flight, timeouts, settlement).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobile_sim.flow import DEFAULT_METHOD, FLOW_METHODS, FlowEstimator, MotionProbe
from mobile_sim.keyframes import (
    DEFAULT_KEY_POLICY,
    DEFAULT_MAX_INTERVAL,
    DEFAULT_MIN_INTERVAL,
    KEY_POLICIES,
    KeyDecision,
    KeyFramePolicy,
    make_policy,
)
from mobile_sim.ledger import KeyLedger
from mobile_sim.link import CONNECT_TIMEOUT_S, CameraTrack, GatewayLink, Outgoing, SenderPts, SignalingAuth
from mobile_sim.link_shim import LinkProfile
from mobile_sim.reconstruct import IntermediateRender, OutputFrame, ReconstructionMode, Reconstructor
from mobile_sim.recorder import VideoRecorder
from mobile_sim.report import REPORT_FILE, FrameRecord, build_report, latency_split, live_rate_shortfall, write_report
from mobile_sim.sources import FrameSource, default_style_photo, open_source
from mobile_sim.warp import Warper
from streaming.coefficients import decode_coefficients
from streaming.config import flag
from streaming.images import ImageDecodeError, decode_image, encode_jpeg
from streaming.protocol import DEFAULT_REGION, ErrorCode, FrameMeta, KeyResult, ProtocolError, ResultKind, Stamp
from streaming.queues import LatestQueue
from streaming.tokens import TOKEN_ENV

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
GATEWAY_CA_ENV = "MVS_GATEWAY_CA"
"""Environment variable with the CA file of an https gateway (when ``--gateway-ca`` is not given)."""
FINISH_GRACE_S = 2.0
STYLE_JPEG_QUALITY = 95


def parse_size(text: str) -> tuple[int, int]:
    """'640x360' -> (640, 360); even, positive sides (the video encoder needs even sizes)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise ValueError(f"size must look like 640x360, got {text!r}") from exc
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise ValueError(f"size sides must be positive and even, got {text!r}")
    return width, height


def show_size(size: tuple[int, int]) -> str:
    """(640, 360) -> '640x360': the inverse of :func:`parse_size`."""
    return f"{size[0]}x{size[1]}"


def parse_smoothing_weight(text: str) -> float:
    """A temporal smoothing weight in [0, 1); 0 turns it off."""
    try:
        weight = float(text)
    except ValueError as exc:
        raise ValueError(f"smoothing weight must be a number, got {text!r}") from exc
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {text!r}")
    return weight


def parse_style_path(text: str) -> str:
    """A style image path that exists and decodes (checked when the flag is parsed, before anything starts)."""
    try:
        load_style(text)
    except (OSError, ImageDecodeError) as exc:
        raise ValueError(f"{exc}") from exc
    return text


@dataclass
class PhoneConfig:
    """Settings of one simulated phone run.

    Fields with :func:`streaming.config.flag` metadata are the phone's command-line flags (``mobile_sim.__main__``
    derives them): ``--size`` and ``--temporal-smoothing`` parse and check their values here, ``--mode`` and
    ``--render`` take their choices from the Literal types, and the link profile is None unless one of its
    ``--link-*`` flags is non-zero.
    """

    gateway_urls: tuple[str, ...] = field(
        default=(),
        metadata=flag(
            f"gateway signaling URL (default {DEFAULT_GATEWAY_URL}); repeatable: when the connection is lost the "
            "phone offers again to the same gateway, then to the next",
            name="gateway",
        ),
    )
    """The gateways to use, in order (empty: :data:`DEFAULT_GATEWAY_URL`)."""
    gateway_ca: Path | None = field(
        default=None, metadata=flag("CA file of an https gateway's certificate", env=GATEWAY_CA_ENV)
    )
    gateway_token: str | None = field(default_factory=lambda: os.environ.get(TOKEN_ENV) or None, repr=False)
    """Admission token for a gateway that requires one: from ``$MVS_GATEWAY_TOKEN`` (never a flag: argv is public)."""
    source: str = field(
        default="synthetic",
        metadata=flag(
            "'synthetic' (camera panning over a bundled photo), 'synthetic:<photo>', "
            "a video file path, or 'device:<index>'"
        ),
    )
    style: str | None = field(
        default=None, metadata=flag("style image path (default: a bundled photo)", parse=parse_style_path)
    )
    """Path of the style image; None: the bundled default style photo."""
    frames: int = field(default=DEFAULT_FRAMES, metadata=flag("frames to stream"))
    size: tuple[int, int] = field(
        default=DEFAULT_SIZE,
        metadata=flag("capture size WxH (even sides)", parse=parse_size, show=show_size, metavar="WxH"),
    )
    fps: float = field(default=DEFAULT_FPS, metadata=flag("capture rate"))
    key_interval: int = field(default=DEFAULT_KEY_INTERVAL, metadata=flag("fixed policy: a key every K frames"))
    """The fixed policy's interval."""
    key_policy: str = field(
        default=DEFAULT_KEY_POLICY,
        metadata=flag(
            "fixed: every --key-interval frames; codec: an encoder's IDR rule (cut vs previous frame); "
            "scene-cut: content change vs the last key; adaptive: when the warp would fail (occlusion, motion)",
            choices=KEY_POLICIES,
        ),
    )
    """One of mobile_sim.keyframes.KEY_POLICIES."""
    min_key_interval: int = field(
        default=DEFAULT_MIN_INTERVAL, metadata=flag("other policies: fewest frames between keys")
    )
    max_key_interval: int = field(
        default=DEFAULT_MAX_INTERVAL, metadata=flag("other policies: most frames between keys")
    )
    """Bounds of the policies other than fixed."""
    flow: str = field(default=DEFAULT_METHOD, metadata=flag("optical flow method on the phone", choices=FLOW_METHODS))
    """One of mobile_sim.flow.FLOW_METHODS."""
    mode: ReconstructionMode = field(
        default="live",
        metadata=flag("live: warp each frame from the previous key; buffered: wait for the next key and blend both"),
    )
    """live: warp from the previous key; buffered: wait for the next key too and blend."""
    fill_occlusions: bool = field(
        default=True,
        metadata=flag(
            "fill pixels failing the forward-backward check from the key's colour map "
            "(--no-occlusion-fill: plain warping)",
            name="occlusion-fill",
        ),
    )
    """Fill pixels failing the forward-backward check from the key's colour map (one more flow per frame)."""
    render: IntermediateRender = field(
        default="warp",
        metadata=flag(
            "warp: warp the stylized key to each frame; affine: ask the edge for the stylizer's colour maps "
            "instead and apply them to every frame (affine-flow: moved along the flow first; buffered: both keys' "
            "maps blended by time distance)"
        ),
    )
    """warp: warp the stylized key; affine / affine-flow: ask the edge for the stylizer's colour maps instead of
    the stylized key and apply them to every frame (affine-flow moves them along the flow first; live mode)."""
    temporal_smoothing: float = field(
        default=0.0,
        metadata=flag(
            "blend each output frame with the previous one warped along the flow, weight W in [0, 1) "
            "(less flicker at key changes, one more flow pair per frame; 0: off)",
            parse=parse_smoothing_weight,
            metavar="W",
        ),
    )
    """Weight of the previous output, warped along the flow, in each output frame (mobile_sim.temporal); 0: off."""
    out_dir: Path | None = field(default=None, metadata=flag("output directory (videos + report.json)", name="out"))
    """Where videos and report.json go; None: nothing written (the run's report is still returned)."""
    link: LinkProfile | None = field(
        default=None, metadata=flag("link", group="emulated network link to the edge (regions on one machine)")
    )
    """Emulated network link to the edge (delay, bandwidth, loss), e.g. for a far region; None: direct."""
    region: str = field(default=DEFAULT_REGION, metadata=flag("region of the edge site"))
    """The region this phone's gateway serves (a label in the report)."""
    ice_hosts: tuple[str, ...] = field(
        default=(), metadata=flag("gather ICE candidates only here (repeatable)", name="ice-host")
    )
    result_timeout_ms: float = field(
        default=DEFAULT_RESULT_TIMEOUT_MS, metadata=flag("a key frame with no result after this counts as failed")
    )
    """A key frame with no outcome after this long counts as failed."""
    lose_frames: frozenset[int] = frozenset()
    """Frame ids announced but never sent: emulated network loss (tests, experiments)."""
    keep_frames: bool = False
    """Keep originals and outputs in the result (tests)."""
    seed: int = 0

    @property
    def gateways(self) -> tuple[str, ...]:
        """The gateways to use, in order."""
        return tuple(url.rstrip("/") for url in self.gateway_urls) or (DEFAULT_GATEWAY_URL,)


@dataclass
class PhoneResult:
    """What a run produced."""

    report: dict[str, Any]
    originals: dict[int, np.ndarray] = field(default_factory=dict)
    outputs: dict[int, OutputFrame] = field(default_factory=dict)
    stylized_keys: dict[int, np.ndarray] = field(default_factory=dict)


def load_style(path: str | None) -> bytes:
    """The style image's bytes (None: the bundled default photo), checked to decode here rather than at the gateway."""
    if path is None:
        return encode_jpeg(default_style_photo(), STYLE_JPEG_QUALITY)
    style = Path(path)
    if not style.is_file():
        raise FileNotFoundError(f"style image {style} does not exist")
    data = style.read_bytes()
    decode_image(data)  # fail here, with the path in view, rather than at the gateway
    return data


def make_reconstructor(config: PhoneConfig, policy: KeyFramePolicy) -> Reconstructor:
    """The phone's reconstructor, holding at most the frames that may wait on their key's outcome (buffered: and
    the next key's); each costs ~9 B/pixel."""
    intervals = 2 if config.mode == "buffered" else 1
    max_waiting = (
        int(config.result_timeout_ms / 1000.0 * config.fps) + intervals * policy.max_interval + WAITING_FRAMES_SLACK
    )
    return Reconstructor(
        FlowEstimator(config.flow),
        Warper(),
        max_frames=max_waiting,
        mode=config.mode,
        occlusion_check=config.fill_occlusions or policy.needs_occlusion,
        fill_occlusions=config.fill_occlusions,
        render=config.render,
        temporal_weight=config.temporal_smoothing,
    )


class Phone:
    """One run of the simulated phone against a gateway: capture -> reconstruct -> emit.

    The reconstructor and the key-frame policy (when it looks at pixels) run on one "phone CPU"
    thread in submission order; decoding results and reading the source on an I/O thread; writing
    the videos on a recorder thread. Everything else runs on the event loop.
    """

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
        self.frames: dict[int, FrameRecord] = {}
        self._send_queue: LatestQueue[Outgoing] = LatestQueue(SEND_QUEUE_FRAMES, precious=lambda item: item.key)
        self._ledger = KeyLedger(config.result_timeout_ms / 1000.0, on_failed=self._key_failed)
        self._link = GatewayLink(
            config.gateways,
            config.link,
            config.ice_hosts,
            on_result=self._on_result,
            on_failure=self._ledger.fail,
            auth=SignalingAuth(config.gateway_token, config.gateway_ca),
            on_lost=self._gateway_lost,
            on_connected=self._gateway_connected,
        )
        self._status, self._reason = "complete", ""
        """How the run ended (the report's ``outcome``): complete; degraded (the live rate missed, why); partial (with
        the reason) or failed."""
        self._reconstructor = make_reconstructor(config, self.policy)
        self._compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="phone-cpu")
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="phone-io")
        self._recording = ThreadPoolExecutor(max_workers=1, thread_name_prefix="phone-recorder")
        self._recorder: VideoRecorder | None = None
        self._originals: dict[int, np.ndarray] = {}  # captured frames not output yet
        self._result = PhoneResult(report={})
        self._work: set[asyncio.Future[None]] = set()
        self._captured = self._output = 0
        self._capture_done = False
        self._all_output = asyncio.Event()
        self._first_capture = self._first_output = self._last_output = 0.0

    async def run(self) -> PhoneResult:
        """Connect, stream every frame, wait for the outputs; write the report whatever happens; return the result.

        The report is always written, with its ``outcome``: complete; partial, with the reason (the gateway lost or
        never reached, outputs that stopped coming, an interruption); or failed. Only the phone's own failure (its
        source or style, a bug) is raised, after the report is written: a phone exits non-zero on that alone."""
        cfg = self.config
        source: FrameSource | None = None
        try:
            source = open_source(cfg.source, cfg.size, cfg.fps, cfg.frames)
            style = load_style(cfg.style)
            if cfg.out_dir is not None:
                self._recorder = VideoRecorder(cfg.out_dir, source.size, source.fps)
            await self._stream(source, style)
        except asyncio.CancelledError:
            self._end("partial", "interrupted")
            raise
        except Exception as exc:
            self._end("failed", f"{type(exc).__name__}: {exc}")
            raise
        finally:
            await self._shut_down(source)
            self._finish(source)
        return self._result

    async def _stream(self, source: FrameSource, style: bytes) -> None:
        cfg = self.config
        pts = SenderPts(cfg.fps, cfg.frames, cfg.seed)
        result_kind = ResultKind.FRAME if cfg.render == "warp" else ResultKind.COEFFICIENTS
        await self._link.start(lambda: CameraTrack(self._send_queue.get, pts, self._on_send), style, result_kind)
        if not await self._link.wait_connected(CONNECT_TIMEOUT_S):
            if self._link.given_up.is_set():  # refused by every gateway (401/403): streaming cannot help
                self._end("partial", f"no gateway reached: {self._link.last_failure}")
                return
            log.warning(
                "no gateway answered; streaming on while trying",
                extra={"gateways": list(cfg.gateways), "last_failure": self._link.last_failure},
            )
        watchdog = asyncio.create_task(self._ledger.watch())
        try:
            await self._capture(source)
            if not self._link.connected.is_set():
                self._drop_unsent("no gateway at the end of capture")
            await self._wait_for_outputs()
        finally:
            watchdog.cancel()
        if self._status == "complete":
            await asyncio.gather(*self._work)
        records = self._ledger.records.values()
        if not any(record.ok for record in records) and records:
            if not self._link.ever_connected:
                self._end("partial", f"no gateway reached: {self._link.last_failure or 'no answer'}")
            else:
                codes = Counter(record.error_code for record in records)
                failures = ", ".join(f"{n} {code}" for code, n in codes.most_common())
                self._end("partial", f"no key frame was stylized (failed: {failures})")
        elif self._link.outages and self._status == "complete":
            self._end("partial", f"gateway lost {len(self._link.outages)} time(s)")

    async def _wait_for_outputs(self) -> None:
        """Wait while outputs keep coming; give up (partial) after a whole result timeout + grace without one."""
        patience_s = self.config.result_timeout_ms / 1000.0 + FINISH_GRACE_S
        while not self._all_output.is_set():
            before = self._output
            try:
                await asyncio.wait_for(self._all_output.wait(), patience_s)
            except asyncio.TimeoutError:
                if self._output == before:
                    missing = self._captured - self._output
                    self._end("partial", f"{missing} frames not output: none came for {patience_s:g} s")
                    return

    def _end(self, status: str, reason: str) -> None:
        """Record how the run ended (the first failure or partial reason wins over later ones)."""
        if self._status == "complete" or status == "failed":
            self._status, self._reason = status, reason

    async def _shut_down(self, source: FrameSource | None) -> None:
        """Close the source and the link; let the threads finish (or drop what waits, when the run is cut short)."""
        complete = self._status == "complete"
        if source is not None:
            source.close()
        await self._link.close()
        for task in list(self._work):
            if not complete:
                task.cancel()
        await asyncio.gather(*self._work, return_exceptions=True)
        self._compute.shutdown(wait=True, cancel_futures=not complete)
        self._io.shutdown(wait=True, cancel_futures=not complete)
        self._recording.shutdown(wait=True)  # every submitted frame is written before the files close
        if self._recorder is not None:
            self._recorder.close()

    def _drop_unsent(self, reason: str) -> None:
        """Frames still waiting for the encoder will not be sent: settle them (a key fails, its frames fall back)."""
        for item in self._send_queue.clear():
            self.frames[item.frame_id].fate = "dropped_before_send"
            if item.key:
                self._ledger.fail(item.frame_id, ErrorCode.DROPPED, reason)

    # --- the link's news ------------------------------------------------------------------------
    def _gateway_lost(self, reason: str) -> None:
        """Keys sent to a gateway that is gone will never be answered: their frames fall back to the last good key."""
        self._ledger.fail_in_flight(ErrorCode.LOST, f"gateway lost: {reason}")

    def _gateway_connected(self) -> None:
        """After a reconnection, the next frame is a key: the new session has none."""
        if self._link.outages:
            self._policy_call(self.policy.request_key, "gateway reconnected")

    # --- capture ------------------------------------------------------------------------------
    async def _capture(self, source: FrameSource) -> None:
        loop = asyncio.get_running_loop()
        start = self._first_capture = time.monotonic()
        last_key = 0
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
            if decision.is_key:
                last_key = frame_id
                self._ledger.mark(frame_id)
            self.frames[frame_id] = FrameRecord(frame_id, capture_ns, decision.is_key, decision.reason, last_key)
            self._originals[frame_id] = image
            self._captured += 1
            self._submit(self._reconstructor.add_frame, frame_id, image, last_key, probe)
            dropped = self._send_queue.put(Outgoing(frame_id, image, decision.is_key, capture_ns))
            if dropped is not None:
                self.frames[dropped.frame_id].fate = "dropped_before_send"
                if dropped.key:
                    self._policy_call(self.policy.request_key, "key frame dropped before send")
                    self._ledger.fail(dropped.frame_id, ErrorCode.DROPPED, "encoder busy: dropped before send")
        self._submit(self._reconstructor.finish)
        self._capture_done = True
        self._check_done()

    def _decide(self, frame_id: int, image: np.ndarray) -> tuple[MotionProbe | None, KeyDecision]:
        """Key-frame decision on the phone CPU thread, with the motion the reconstructor reuses."""
        probe = self._reconstructor.probe(image)
        return probe, self.policy.decide(frame_id, image, probe)

    def _policy_call(self, fn: Callable[..., object], *args: Any) -> None:
        """Call the policy on the thread its decide() runs on, so its state is never shared between threads."""
        if self.policy.looks_at_frames:
            self._compute.submit(fn, *args)
        else:
            fn(*args)

    def _on_send(self, meta: FrameMeta) -> bool:
        """The track is about to send a frame: announce it, start a key's timeout; False if the run loses it."""
        self._link.announce(meta)
        if meta.key:
            self._ledger.sent(meta.frame_id)
        if meta.frame_id in self.config.lose_frames:
            self.frames[meta.frame_id].fate = "lost"
            return False
        return True

    # --- key results ----------------------------------------------------------------------------
    def _on_result(self, header: KeyResult, payload: bytes) -> None:
        """A key's complete result came over the link: decode it off the loop, unless it is late or unknown."""
        if not self._ledger.claim(header.frame_id):
            return
        self._track(self._decode_and_accept(header, payload))

    async def _decode_and_accept(self, header: KeyResult, payload: bytes) -> None:
        """Decode a key's result on the I/O thread (not behind the flow backlog), then hand it over."""
        decoder = decode_coefficients if header.kind == ResultKind.COEFFICIENTS else decode_image
        try:
            result: np.ndarray | None = await asyncio.get_running_loop().run_in_executor(self._io, decoder, payload)
            error = ""
        except (ImageDecodeError, ProtocolError) as exc:
            result, error = None, f"undecodable {header.kind} result: {exc}"
        header.stamps[Stamp.PHONE_DECODED] = time.monotonic_ns()
        if result is not None and (parts := latency_split(header.stamps)) is not None:
            self._link.report_latency(header.frame_id, parts)  # the site records what its user sees
        self._submit(self._accept_key, header, len(payload), result, error)

    def _accept_key(self, header: KeyResult, size: int, result: np.ndarray | None, error: str) -> list[OutputFrame]:
        """Rebuild what waits on a key's stylized frame or colour maps (phone CPU thread)."""
        if result is None:
            self._ledger.undecodable(header.frame_id, error)
            self._reconstructor.key_failed(header.frame_id, error)
            return self._reconstructor.pop_ready()
        self._ledger.succeeded(header, size)
        if header.kind == ResultKind.COEFFICIENTS:
            stylized = self._reconstructor.add_coefficients(header.frame_id, result)
        else:
            stylized = result
            self._reconstructor.add_stylized(header.frame_id, stylized)
        if self.config.keep_frames and stylized is not None:
            self._result.stylized_keys[header.frame_id] = stylized
        return self._reconstructor.pop_ready()

    def _key_failed(self, frame_id: int, code: str) -> None:
        """The ledger settled a key as failed: its frames fall back (phone CPU thread, in order)."""
        self._submit(self._reconstructor.key_failed, frame_id, code)

    # --- reconstruct -> emit ----------------------------------------------------------------------
    def _submit(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn`` on the phone CPU thread (in submission order), then output what became ready."""
        loop = asyncio.get_running_loop()

        def call() -> list[OutputFrame]:
            result = fn(*args)
            return result if isinstance(result, list) else self._reconstructor.pop_ready()

        future: Future[list[OutputFrame]] = self._compute.submit(call)
        self._track(self._emit(asyncio.wrap_future(future, loop=loop)))

    def _track(self, work: Coroutine[Any, Any, None]) -> None:
        """Keep a task of this run until it is done (the run waits for all of them)."""
        task = asyncio.ensure_future(work)
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
            self._output += 1
            self._last_output = time.monotonic()
            if self._output == 1:
                self._first_output = self._last_output
        self._check_done()

    def _check_done(self) -> None:
        if self._capture_done and self._output >= self._captured:
            self._all_output.set()

    # --- report ------------------------------------------------------------------------------------
    def _finish(self, source: FrameSource | None) -> PhoneResult:
        cfg = self.config
        duration = max(0.0, self._last_output - self._first_capture)
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
        settings["lose_frames"] = sorted(cfg.lose_frames)
        settings["size"] = list(source.size if source is not None else cfg.size)
        counters = {
            **self._link.counters,
            **self._ledger.counters,
            "send_queue_dropped": self._send_queue.dropped,
            "chunks_discarded": self._link.chunks_discarded,
            **self._reconstructor.stats,
        }
        report = build_report(
            region=cfg.region,
            settings=settings,
            frames=[self.frames[i] for i in sorted(self.frames)],
            keys=self._ledger.records,
            duration_s=duration,
            counters=counters,
            output_span_s=max(0.0, self._last_output - self._first_output),
        )
        report["network"] = self._link.stats()
        shortfall = live_rate_shortfall(report, source.fps if source is not None else cfg.fps)
        if shortfall:
            self._end("degraded", shortfall)
        report["outcome"] = {"status": self._status, "reason": self._reason}
        if cfg.out_dir is not None:
            write_report(report, cfg.out_dir / REPORT_FILE)
        self._result.report = report
        return self._result


async def run_phone(config: PhoneConfig) -> PhoneResult:
    """Run one simulated phone to the end of its source."""
    return await Phone(config).run()
