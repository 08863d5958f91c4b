// The browser phone: camera -> WebRTC video to the gateway, frame announcements and key results on the data
// channel (streaming/protocol.py defines every message; MessagePack is the vendored @msgpack/msgpack), and every
// camera frame rendered here from the latest key's colour maps (affine-gl.js).
import { AffineGL, decodeCoefficients } from "./affine-gl.js";
import { testSourceStream } from "./test-source.js";

const SCHEMA_VERSION = 2; // streaming/protocol.py SCHEMA_VERSION
const DATA_CHANNEL_LABEL = "mvs"; // streaming/protocol.py DATA_CHANNEL_LABEL
const ICE_GATHER_TIMEOUT_MS = 3000; // the gateway does not trickle ICE (streaming/gateway/server.py): wait, bounded
const RTT_WINDOW = 200; // key round trips kept for the percentiles
const KEYS_IN_FLIGHT_FORGET_MS = 10000;
const MAX_QUEUED_ANNOUNCEMENTS = 300; // frames encoded before the data channel opens (~10 s at 30 fps)
const TEST_SOURCE = "test"; // the camera choice that draws test-source.js instead
const TOKEN_PARAM = "token"; // #token=... : a fragment never reaches the server or its logs

const $ = (id) => document.getElementById(id);
const ui = {
  camera: $("camera"), resolution: $("resolution"), keyInterval: $("key-interval"), style: $("style"),
  styleFile: $("style-file"), stylePreview: $("style-preview"), start: $("start"), stop: $("stop"),
  view: $("view"), record: $("record"), download: $("download"), message: $("message"), stage: $("stage"),
  video: $("source"), output: $("output"), hud: $("hud"), token: $("token"), tokenLabel: $("token-label"),
};

const stats = { keysRequested: 0, keysOk: 0, keysFailed: 0, rtts: [], frames: 0, announced: 0, errors: [], failures: {} };
let session = null;
let renderer = null;
let latestBlob = null;
let latestApplied = -1;
let uploadedStyle = null;

function say(text, isError = false) {
  ui.message.textContent = text;
  ui.message.className = isError ? "error" : "";
}

const encode = (message) => MessagePack.encode({ v: SCHEMA_VERSION, ...message });
const decode = (data) => MessagePack.decode(new Uint8Array(data), { useBigInt64: true });

const DASH = "-"; // the HUD before it has data

function percentile(values, p) {
  if (!values.length) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

async function bytesToBase64(bytes) {
  const url = await new Promise((resolve) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.readAsDataURL(new Blob([bytes]));
  });
  return url.slice(url.indexOf(",") + 1);
}

async function styleBytes() {
  if (uploadedStyle) return uploadedStyle;
  const response = await fetch(ui.style.value);
  return new Uint8Array(await response.arrayBuffer());
}

async function loadStyles() {
  const { styles } = await (await fetch("/styles")).json();
  for (const s of styles) ui.style.add(new Option(s.name, s.url));
  ui.stylePreview.src = ui.style.value;
}

// --- frame ids: the sender's RTP timestamp of every encoded frame, read through Encoded Transform ---------
function encodedTransformSupport() {
  if ("RTCRtpScriptTransform" in window) return "script";
  if ("RTCRtpSender" in window && "createEncodedStreams" in RTCRtpSender.prototype) return "streams"; // older Chromium
  return null;
}

// What this browser lacks for the app (null: nothing), said plainly.
function missingFeature() {
  if (!("RTCPeerConnection" in window)) {
    return "This browser has no WebRTC (RTCPeerConnection is not defined), so it cannot stream video to the " +
      "gateway. Use a current Chrome, Edge, Firefox (117+) or Safari (15.4+).";
  }
  if (!encodedTransformSupport()) {
    return "This browser lacks WebRTC Encoded Transform (RTCRtpScriptTransform), which the gateway needs to tell " +
      "frames apart. Use a current Chrome, Edge, Safari (15.4+) or Firefox (117+).";
  }
  if (!("DecompressionStream" in window)) return "This browser lacks DecompressionStream, needed to unpack the colour maps.";
  return null;
}

function attachTransform(sender, kind, onEncoded) {
  if (kind === "script") {
    const worker = new Worker("/static/sender-transform.js");
    worker.onmessage = (event) => onEncoded(event.data.rtp);
    sender.transform = new RTCRtpScriptTransform(worker, {});
    return worker;
  }
  const { readable, writable } = sender.createEncodedStreams();
  readable
    .pipeThrough(new TransformStream({
      transform(frame, controller) {
        onEncoded(frame.getMetadata().rtpTimestamp ?? frame.timestamp);
        controller.enqueue(frame);
      },
    }))
    .pipeTo(writable);
  return null;
}

// --- the session -----------------------------------------------------------------------------------------
class Session {
  constructor(stream, transformKind) {
    this.stream = stream;
    this.frameId = 0;
    this.sentAt = new Map(); // key frame id -> performance.now() when announced
    this.results = new Map(); // frame id -> {header, parts, received}
    this.pc = new RTCPeerConnection(transformKind === "streams" ? { encodedInsertableStreams: true } : {});
    this.channel = this.pc.createDataChannel(DATA_CHANNEL_LABEL, { ordered: true });
    this.channel.binaryType = "arraybuffer";
    this.channel.onmessage = (event) => this.onMessage(event.data);
    // Every frame the gateway may decode must be announced (frame_ids.py locks on that), so frames encoded
    // before the channel opens are announced when it does.
    this.queued = [];
    this.channel.onopen = () => {
      for (const message of this.queued) this.channel.send(message);
      this.queued = [];
    };
    const [track] = stream.getVideoTracks();
    const { sender } = this.pc.addTransceiver(track, { direction: "sendonly", streams: [stream] });
    // Must be attached before setLocalDescription, or the transform silently sees no frames.
    this.worker = attachTransform(sender, transformKind, (rtp) => this.onEncoded(rtp));
    this.pc.onconnectionstatechange = () => {
      if (["failed", "closed"].includes(this.pc.connectionState)) say(`connection ${this.pc.connectionState}`, true);
    };
  }

  async connect(style) {
    await this.pc.setLocalDescription(await this.pc.createOffer());
    await new Promise((resolve) => {
      if (this.pc.iceGatheringState === "complete") return resolve();
      const timer = setTimeout(resolve, ICE_GATHER_TIMEOUT_MS);
      this.pc.addEventListener("icegatheringstatechange", () => {
        if (this.pc.iceGatheringState === "complete") {
          clearTimeout(timer);
          resolve();
        }
      });
    });
    const body = { type: "offer", sdp: this.pc.localDescription.sdp, style: await bytesToBase64(style), result: "coefficients" };
    const headers = { "Content-Type": "application/json" };
    const token = ui.token.value.trim();
    if (token) headers.Authorization = `Bearer ${token}`;
    const response = await fetch("/offer", { method: "POST", headers, body: JSON.stringify(body) });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) {
      if (response.status === 401 || response.status === 403) ui.tokenLabel.hidden = false;
      throw new Error(`gateway refused the offer: ${answer.error ?? response.status}`);
    }
    this.streamId = answer.stream_id;
    await this.pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
  }

  onEncoded(rtp) {
    const open = this.channel.readyState === "open";
    const frameId = this.frameId++;
    const interval = Math.max(1, Number(ui.keyInterval.value) || 1);
    const key = open && frameId % interval === 0; // no keys before the channel can return them
    const now = performance.now();
    const message = encode({ t: "frame", frame_id: frameId, pts: rtp, key, capture_ns: Math.round(now * 1e6) });
    if (open) this.channel.send(message);
    else if (this.queued.length < MAX_QUEUED_ANNOUNCEMENTS) this.queued.push(message);
    stats.announced++;
    if (key) {
      stats.keysRequested++;
      this.sentAt.set(frameId, now);
    }
    for (const [id, at] of this.sentAt) if (now - at > KEYS_IN_FLIGHT_FORGET_MS) this.sentAt.delete(id);
  }

  onMessage(data) {
    let m;
    try {
      m = decode(data);
    } catch (err) {
      say(`undecodable message from the gateway: ${err}`, true);
      return;
    }
    const frameId = Number(m.frame_id);
    if (m.t === "result") {
      if (!m.ok) {
        stats.keysFailed++;
        stats.failures[m.error_code] = (stats.failures[m.error_code] ?? 0) + 1;
        this.sentAt.delete(frameId);
        return;
      }
      this.results.set(frameId, { header: m, parts: new Array(Number(m.chunks)), received: 0 });
    } else if (m.t === "chunk") {
      const entry = this.results.get(frameId);
      if (!entry || entry.parts[m.index] !== undefined) return;
      entry.parts[m.index] = m.data;
      if (++entry.received === entry.parts.length) {
        this.results.delete(frameId);
        this.onResult(frameId, entry.header, entry.parts);
      }
    } else if (m.t === "error") {
      stats.errors.push(`${m.code}: ${m.error}`);
      say(`gateway rejected a message: ${m.code}: ${m.error}`, true);
    }
  }

  async onResult(frameId, header, parts) {
    const blob = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      blob.set(p, at);
      at += p.length;
    }
    const sent = this.sentAt.get(frameId);
    this.sentAt.delete(frameId);
    try {
      if (header.kind === "coefficients") {
        const coeffs = await decodeCoefficients(blob);
        if (frameId > latestApplied) {
          latestApplied = frameId;
          latestBlob = blob;
          renderer.setCoefficients(coeffs);
        }
      } else {
        const image = await createImageBitmap(new Blob([blob], { type: "image/jpeg" }));
        if (frameId > latestApplied) {
          latestApplied = frameId;
          renderer.setKeyImage(image);
        }
      }
    } catch (err) {
      stats.keysFailed++;
      stats.failures.decode = (stats.failures.decode ?? 0) + 1;
      say(`could not use key ${frameId}: ${err}`, true);
      return;
    }
    stats.keysOk++;
    if (sent !== undefined) {
      stats.rtts.push(performance.now() - sent);
      if (stats.rtts.length > RTT_WINDOW) stats.rtts.shift();
    }
  }

  close() {
    this.worker?.terminate();
    this.pc.close();
    for (const t of this.stream.getTracks()) t.stop();
  }
}

// --- rendering every camera frame ---------------------------------------------------------------------------
function renderLoop() {
  const video = ui.video;
  const draw = () => {
    if (video.videoWidth && renderer) {
      renderer.render(video, video.videoWidth, video.videoHeight);
      stats.frames++;
    }
    schedule();
  };
  const schedule = () => ("requestVideoFrameCallback" in video ? video.requestVideoFrameCallback(draw) : requestAnimationFrame(draw));
  schedule();
}

let fps = 0;
function hudLoop() {
  let lastFrames = 0;
  let lastAt = performance.now();
  setInterval(() => {
    const now = performance.now();
    fps = ((stats.frames - lastFrames) * 1000) / (now - lastAt);
    lastFrames = stats.frames;
    lastAt = now;
    const ms = (p) => (stats.rtts.length ? `${percentile(stats.rtts, p).toFixed(0)} ms` : DASH);
    const fails = Object.entries(stats.failures).map(([k, v]) => `${k} ${v}`).join(", ");
    const size = ui.video.videoWidth ? `${ui.video.videoWidth}x${ui.video.videoHeight}` : DASH;
    ui.hud.textContent = [
      `${stats.frames ? fps.toFixed(1) : DASH} fps  ${size}`,
      `key round trip p50 ${ms(50)}  p95 ${ms(95)}`,
      `keys ${stats.keysRequested} requested  ${stats.keysOk} ok  ${stats.keysFailed} failed${fails ? ` (${fails})` : ""}`,
    ].join("\n");
  }, 500);
}

// --- controls ---------------------------------------------------------------------------------------------
async function start() {
  const missing = missingFeature();
  if (missing) {
    say(missing, true);
    return;
  }
  const transformKind = encodedTransformSupport();
  ui.start.disabled = true;
  try {
    const stream = await openSource();
    if (!stream) {
      ui.start.disabled = false;
      return;
    }
    ui.video.srcObject = stream;
    latestApplied = -1;
    session = new Session(stream, transformKind);
    say("connecting...");
    await session.connect(await styleBytes());
    say(`streaming (${session.streamId})`);
    ui.stop.disabled = false;
    ui.record.disabled = false;
  } catch (err) {
    say(`${err}`, true);
    session?.close();
    session = null;
    ui.start.disabled = false;
  }
}

// The chosen camera (facingMode front/back, or a listed device), or the test source; null (and a message) when
// there is no camera to use.
async function openSource() {
  const [width, height] = ui.resolution.value.split("x").map(Number);
  const choice = ui.camera.value;
  if (choice === TEST_SOURCE) return testSourceStream(width, height);
  if (!navigator.mediaDevices?.getUserMedia) {
    say("This page cannot use a camera here: browsers allow it only on https:// or http://localhost pages. " +
      "Open the gateway's https URL, or pick \"test pattern\" under camera.", true);
    return null;
  }
  const camera = choice === "user" || choice === "environment" ? { facingMode: choice } : { deviceId: { exact: choice } };
  try {
    const stream = await navigator.mediaDevices.getUserMedia({
      video: { ...camera, width: { ideal: width }, height: { ideal: height } }, audio: false,
    });
    await listCameras();
    return stream;
  } catch (err) {
    say(cameraProblem(err), true);
    return null;
  }
}

function cameraProblem(err) {
  const hint = ' Pick "test pattern" under camera to try the app without one.';
  switch (err?.name) {
    case "NotFoundError":
    case "OverconstrainedError":
      return `No camera found on this device.${hint}`;
    case "NotAllowedError":
    case "SecurityError":
      return `The camera was not allowed: allow it in the browser's site settings and press Start again.${hint}`;
    case "NotReadableError":
    case "AbortError":
      return `The camera is busy or failed to start (another app may be using it).${hint}`;
    default:
      return `Could not open the camera: ${err}.${hint}`;
  }
}

function stop() {
  session?.close();
  session = null;
  ui.start.disabled = false;
  ui.stop.disabled = true;
  say("stopped");
}

async function listCameras() {
  const known = new Set([...ui.camera.options].map((o) => o.value));
  for (const d of await navigator.mediaDevices.enumerateDevices()) {
    if (d.kind === "videoinput" && d.deviceId && !known.has(d.deviceId)) {
      ui.camera.add(new Option(d.label || `camera ${ui.camera.options.length - 1}`, d.deviceId));
    }
  }
}

let recorder = null;
function toggleRecord() {
  if (recorder) {
    recorder.stop();
    return;
  }
  const chunks = [];
  recorder = new MediaRecorder(ui.output.captureStream(30));
  recorder.ondataavailable = (event) => chunks.push(event.data);
  recorder.onstop = () => {
    const url = URL.createObjectURL(new Blob(chunks, { type: recorder.mimeType }));
    Object.assign(ui.download, { href: url, download: `mvstylizer-${Date.now()}.webm`, hidden: false });
    recorder = null;
    ui.record.textContent = "Record";
  };
  recorder.start(1000);
  ui.record.textContent = "Stop recording";
}

function toggleView() {
  const full = ui.stage.classList.toggle("full");
  ui.stage.classList.toggle("side-by-side", !full);
  ui.view.textContent = full ? "Side by side" : "Full screen";
  if (full) ui.stage.requestFullscreen?.().catch(() => {});
  else if (document.fullscreenElement) document.exitFullscreen();
}

// Test and debugging hooks (tests/test_browser.py): counters, and one frame rendered from a snapshot.
window.mvs = {
  stats: () => ({ ...stats, rtts: [...stats.rtts], fps, applied: latestApplied }),
  async snapshot() {
    const video = ui.video;
    const bitmap = await createImageBitmap(video);
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const ctx = canvas.getContext("2d");
    ctx.drawImage(bitmap, 0, 0);
    const image = ctx.getImageData(0, 0, bitmap.width, bitmap.height);
    const source = image.data;
    // The shader gets the very pixels returned as `source` (a video frame uploaded as a texture may be
    // converted from YUV differently from the 2D canvas's conversion, by a level, which the maps amplify).
    // The maps rendered with, taken with the render: a key arriving during the awaits below must not replace them.
    const blob = latestBlob;
    renderer.render(image, bitmap.width, bitmap.height);
    const output = renderer.pixels();
    return {
      width: bitmap.width, height: bitmap.height, source: await bytesToBase64(source),
      output: await bytesToBase64(output), coefficients: blob ? await bytesToBase64(blob) : null,
    };
  },
};

ui.start.onclick = start;
ui.stop.onclick = stop;
ui.record.onclick = toggleRecord;
ui.view.onclick = toggleView;
ui.style.onchange = () => {
  uploadedStyle = null;
  ui.stylePreview.src = ui.style.value;
};
ui.styleFile.onchange = async () => {
  const file = ui.styleFile.files[0];
  if (!file) return;
  uploadedStyle = new Uint8Array(await file.arrayBuffer());
  ui.stylePreview.src = URL.createObjectURL(file);
};
// A token in the fragment (#token=...) fills the field, and leaves the address bar (no copy of it in a shared link).
const fragment = new URLSearchParams(location.hash.slice(1));
if (fragment.has(TOKEN_PARAM)) {
  ui.token.value = fragment.get(TOKEN_PARAM);
  ui.tokenLabel.hidden = false;
  history.replaceState(null, "", location.pathname + location.search);
}
try {
  renderer = new AffineGL(ui.output);
} catch (err) {
  say(`${err}`, true);
}
const missing = missingFeature();
if (missing) say(missing, true);
const stylesLoaded = loadStyles();
renderLoop();
hudLoop();
if (new URLSearchParams(location.search).has("autostart")) stylesLoaded.then(start);
