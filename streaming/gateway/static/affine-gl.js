// The `affine` render of mobile_sim/affine.py in WebGL2: a key's colour maps applied per pixel to every frame.
//
// Coefficient blobs are streaming/coefficients.py's format inside streaming/tensors.py's `mvs-tensors/1`
// container (both documented there): a msgpack map {format, zlib}, the zlib stream inflated with the browser's
// DecompressionStream("deflate"), then a msgpack map name -> {dtype, shape, data (little-endian, C order)}.
// The maps: `codes` uint8 h x w x 12 delta-coded along rows (x), `low` and `step` float32[12];
// map c = (running sum of codes along x, mod 256) * step[c] + low[c]. Channels: a 3x3 matrix A row-major
// (out channel j, in channel i at 3j + i), then the offset b (9 + j), on RGB in [0, 1].
//
// Rendering matches AffineRenderer: the grid is resampled bilinearly to the frame with pixel centres aligned
// and edges clamped (cv2.resize INTER_LINEAR, done here in the shader with texelFetch so no GPU filtering
// precision is involved), then out = clip(A * rgb + b, 0, 1) per pixel.

const TENSORS_FORMAT = "mvs-tensors/1";
const COEFFS = 12;
const MAX_INFLATED_BYTES = 16 << 20; // coefficient maps are ~100 KB inflated; refuse bombs

async function inflate(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  const reader = stream.getReader();
  const parts = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.length;
    if (size > MAX_INFLATED_BYTES) {
      await reader.cancel();
      throw new Error(`tensor map larger than ${MAX_INFLATED_BYTES} B`);
    }
    parts.push(value);
  }
  const out = new Uint8Array(size);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Parse an mvs-tensors blob into {name: {dtype, shape, data: Uint8Array}}. */
export async function decodeTensors(bytes) {
  const body = MessagePack.decode(bytes);
  if (!body || body.format !== TENSORS_FORMAT) throw new Error(`expected a ${TENSORS_FORMAT} blob`);
  const packed = body.zlib instanceof Uint8Array ? await inflate(body.zlib) : body.tensors;
  if (!(packed instanceof Uint8Array)) throw new Error("tensor blob holds no tensor map");
  return MessagePack.decode(packed);
}

function float32s(entry, n) {
  if (entry?.dtype !== "float32" || entry.data.length !== 4 * n) throw new Error("not a coefficient blob");
  const view = new DataView(entry.data.buffer, entry.data.byteOffset, entry.data.byteLength);
  return Float32Array.from({ length: n }, (_, i) => view.getFloat32(4 * i, true));
}

/** A coefficient blob -> {width, height, maps: Float32Array(h * w * 12)} (the half-size grid, HWC). */
export async function decodeCoefficients(bytes) {
  const t = await decodeTensors(bytes);
  const codes = t.codes;
  if (codes?.dtype !== "uint8" || codes.shape.length !== 3 || Number(codes.shape[2]) !== COEFFS) {
    throw new Error("not a coefficient blob");
  }
  const [height, width] = codes.shape.map(Number);
  if (codes.data.length !== height * width * COEFFS) throw new Error("coefficient codes have the wrong size");
  const low = float32s(t.low, COEFFS);
  const step = float32s(t.step, COEFFS);
  const maps = new Float32Array(height * width * COEFFS);
  for (let y = 0; y < height; y++) {
    const sum = new Uint8Array(COEFFS); // uint8 wraps like numpy's cumsum(dtype=uint8)
    for (let x = 0; x < width; x++) {
      const at = (y * width + x) * COEFFS;
      for (let c = 0; c < COEFFS; c++) {
        sum[c] += codes.data[at + c];
        maps[at + c] = Math.fround(Math.fround(sum[c] * step[c]) + low[c]);
      }
    }
  }
  return { width, height, maps };
}

const VERTEX = `#version 300 es
in vec2 a_pos;
void main() { gl_Position = vec4(a_pos, 0.0, 1.0); }`;

const AFFINE = `#version 300 es
precision highp float;
precision highp int;
uniform sampler2D u_frame;
uniform highp sampler2D u_c0, u_c1, u_c2;
uniform ivec2 u_grid;
uniform vec2 u_size;
out vec4 o;
vec4 at(highp sampler2D t, ivec2 p) { return texelFetch(t, clamp(p, ivec2(0), u_grid - 1), 0); }
vec4 bilinear(highp sampler2D t, ivec2 p0, vec2 f) {
  return mix(mix(at(t, p0), at(t, p0 + ivec2(1, 0)), f.x), mix(at(t, p0 + ivec2(0, 1)), at(t, p0 + ivec2(1, 1)), f.x), f.y);
}
void main() {
  vec2 pix = vec2(gl_FragCoord.x, u_size.y - gl_FragCoord.y);   // pixel centre, row 0 at the top
  vec3 rgb = texelFetch(u_frame, ivec2(pix), 0).rgb;
  vec2 g = pix * vec2(u_grid) / u_size - 0.5;                   // cv2 INTER_LINEAR source coordinate
  vec2 base = floor(g);
  vec2 f = g - base;
  ivec2 p0 = ivec2(base);
  vec4 c0 = bilinear(u_c0, p0, f), c1 = bilinear(u_c1, p0, f), c2 = bilinear(u_c2, p0, f);
  vec3 y = vec3(dot(c0.xyz, rgb), dot(vec3(c0.w, c1.xy), rgb), dot(vec3(c1.zw, c2.x), rgb)) + c2.yzw;
  o = vec4(clamp(y, 0.0, 1.0), 1.0);
}`;

const COPY = `#version 300 es
precision highp float;
uniform sampler2D u_frame;
uniform vec2 u_size;
out vec4 o;
void main() {
  vec2 uv = vec2(gl_FragCoord.x, u_size.y - gl_FragCoord.y) / u_size;
  o = vec4(texture(u_frame, uv).rgb, 1.0);
}`;

function compile(gl, vertex, fragment) {
  const program = gl.createProgram();
  for (const [type, src] of [[gl.VERTEX_SHADER, vertex], [gl.FRAGMENT_SHADER, fragment]]) {
    const shader = gl.createShader(type);
    gl.shaderSource(shader, src);
    gl.compileShader(shader);
    if (!gl.getShaderParameter(shader, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(shader));
    gl.attachShader(program, shader);
  }
  gl.linkProgram(program);
  if (!gl.getProgramParameter(program, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(program));
  return program;
}

function texture(gl, filter) {
  const t = gl.createTexture();
  gl.bindTexture(gl.TEXTURE_2D, t);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, filter);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, filter);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE);
  return t;
}

/** Draws frames onto a canvas: through a key's colour maps (setCoefficients), or a stylized key image (setKeyImage). */
export class AffineGL {
  constructor(canvas) {
    const gl = canvas.getContext("webgl2", { preserveDrawingBuffer: true, antialias: false, premultipliedAlpha: false });
    if (!gl) throw new Error("WebGL2 is not available in this browser");
    this.gl = gl;
    this.canvas = canvas;
    this.affine = compile(gl, VERTEX, AFFINE);
    this.copy = compile(gl, VERTEX, COPY);
    const quad = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, quad);
    gl.bufferData(gl.ARRAY_BUFFER, new Float32Array([-1, -1, 1, -1, -1, 1, 1, 1]), gl.STATIC_DRAW);
    for (const p of [this.affine, this.copy]) {
      const loc = gl.getAttribLocation(p, "a_pos");
      gl.enableVertexAttribArray(loc);
      gl.vertexAttribPointer(loc, 2, gl.FLOAT, false, 0, 0);
    }
    this.frame = texture(gl, gl.NEAREST);
    this.key = texture(gl, gl.LINEAR);
    this.coeffs = [0, 1, 2].map(() => texture(gl, gl.NEAREST));
    this.grid = null;
    this.mode = "none"; // "affine" | "key" | "none" (source as is)
  }

  /** Use these decoded maps ({width, height, maps}) for the frames that follow. */
  setCoefficients({ width, height, maps }) {
    const gl = this.gl;
    for (let k = 0; k < 3; k++) {
      const planes = new Float32Array(width * height * 4);
      for (let i = 0; i < width * height; i++) {
        for (let c = 0; c < 4; c++) planes[4 * i + c] = maps[i * COEFFS + 4 * k + c];
      }
      gl.bindTexture(gl.TEXTURE_2D, this.coeffs[k]);
      gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA32F, width, height, 0, gl.RGBA, gl.FLOAT, planes);
    }
    this.grid = [width, height];
    this.mode = "affine";
  }

  /** Show a stylized key image (a worker without colour maps answers with frames). */
  setKeyImage(image) {
    const gl = this.gl;
    gl.bindTexture(gl.TEXTURE_2D, this.key);
    gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA, gl.RGBA, gl.UNSIGNED_BYTE, image);
    this.mode = "key";
  }

  /** Render one frame (a video element, ImageData, canvas, ...) of width x height. */
  render(source, width, height) {
    const gl = this.gl;
    if (this.canvas.width !== width || this.canvas.height !== height) {
      this.canvas.width = width;
      this.canvas.height = height;
    }
    gl.viewport(0, 0, width, height);
    gl.activeTexture(gl.TEXTURE0);
    gl.bindTexture(gl.TEXTURE_2D, this.frame);
    gl.pixelStorei(gl.UNPACK_FLIP_Y_WEBGL, false);
    gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA, gl.RGBA, gl.UNSIGNED_BYTE, source);
    if (this.mode === "affine") {
      gl.useProgram(this.affine);
      this.coeffs.forEach((t, k) => {
        gl.activeTexture(gl.TEXTURE1 + k);
        gl.bindTexture(gl.TEXTURE_2D, t);
        gl.uniform1i(gl.getUniformLocation(this.affine, `u_c${k}`), 1 + k);
      });
      gl.uniform1i(gl.getUniformLocation(this.affine, "u_frame"), 0);
      gl.uniform2i(gl.getUniformLocation(this.affine, "u_grid"), ...this.grid);
      gl.uniform2f(gl.getUniformLocation(this.affine, "u_size"), width, height);
    } else {
      gl.useProgram(this.copy);
      if (this.mode === "key") {
        gl.activeTexture(gl.TEXTURE0);
        gl.bindTexture(gl.TEXTURE_2D, this.key);
      }
      gl.uniform1i(gl.getUniformLocation(this.copy, "u_frame"), 0);
      gl.uniform2f(gl.getUniformLocation(this.copy, "u_size"), width, height);
    }
    gl.drawArrays(gl.TRIANGLE_STRIP, 0, 4);
  }

  /** The canvas as RGBA rows, top row first. */
  pixels() {
    const { gl, canvas } = this;
    const out = new Uint8Array(canvas.width * canvas.height * 4);
    gl.readPixels(0, 0, canvas.width, canvas.height, gl.RGBA, gl.UNSIGNED_BYTE, out);
    const row = canvas.width * 4;
    const flipped = new Uint8Array(out.length);
    for (let y = 0; y < canvas.height; y++) flipped.set(out.subarray(y * row, (y + 1) * row), (canvas.height - 1 - y) * row);
    return flipped;
  }
}
