// The built-in test source, for a device without a camera: a slow pan and zoom over a bundled photo
// (test-source.jpg, scikit-image's "astronaut", NASA, public domain) with a moving bar, drawn into a canvas and
// captured with captureStream, so the rest of the app sees an ordinary video track.
const PHOTO_URL = "/static/test-source.jpg";
const PERIOD_S = 8; // one pan back and forth

export async function testSourceStream(width, height, fps = 30) {
  const canvas = document.createElement("canvas");
  if (!("captureStream" in canvas)) throw new Error("this browser cannot capture a canvas (captureStream)");
  canvas.width = width;
  canvas.height = height;
  const photo = new Image();
  photo.src = PHOTO_URL;
  await photo.decode();
  const ctx = canvas.getContext("2d");
  const stream = canvas.captureStream(fps);
  const [track] = stream.getVideoTracks();
  const started = performance.now();
  const draw = () => {
    if (track.readyState === "ended") {
      clearInterval(timer); // stopped with the session's other tracks
      return;
    }
    const t = ((performance.now() - started) / 1000 / PERIOD_S) % 1;
    const phase = 0.5 - 0.5 * Math.cos(2 * Math.PI * t); // 0 -> 1 -> 0
    // A window of the photo with the output's aspect ratio, 70-85 % of the photo's width, moving across it.
    const zoom = 0.85 - 0.15 * phase;
    const sw = photo.width * zoom;
    const sh = Math.min(photo.height, (sw * height) / width);
    const sx = (photo.width - sw) * phase;
    const sy = (photo.height - sh) * (1 - phase);
    ctx.drawImage(photo, sx, sy, sw, sh, 0, 0, width, height);
    ctx.fillStyle = "#fff";
    ctx.fillRect(Math.round(t * width), height - 8, Math.round(width / 20), 8); // motion, and the clip's clock
  };
  const timer = setInterval(draw, 1000 / fps);
  draw();
  return stream;
}
