/**
 * Elementwise kernels: add, sub, mul, scale, axpy, fill, ReLU and GELU (tanh form) with their
 * backward passes, and f16↔f32 casts on packed `u32` words (no `shader-f16` needed).
 *
 * All take an optional `out` tensor, which may be one of the inputs (an in-place update): the
 * shader variant then binds that tensor once, writable, since WebGPU forbids binding one buffer
 * twice in a dispatch when one binding is writable. Partially overlapping operands are an error.
 *
 * @module
 */

import { checkShape } from "./errors.ts";
import { groups, LINEAR_MAIN } from "./_shader.ts";
import { type Gpu, Params, type Tensor } from "./runtime.ts";

/** Which operand the result overwrites: a separate `out`, or an input in place. */
type Target = "out" | "x" | "y";

/**
 * A unary op `out = expr(v)`, or in place (`x = expr(x)`, one binding). Inputs are read-only
 * bindings: WebGPU forbids binding one buffer both writable and read-only in a dispatch.
 */
function unaryShader(expr: string, target: "out" | "x" = "out"): string {
  const decl = target === "x"
    ? `@group(0) @binding(0) var<storage, read_write> x: array<f32>;   // (n), updated in place
@group(0) @binding(1) var<uniform> p: P;`
    : `@group(0) @binding(0) var<storage, read> x: array<f32>;         // (n)
@group(0) @binding(1) var<storage, read_write> out: array<f32>; // (n)
@group(0) @binding(2) var<uniform> p: P;`;
  return `
struct P { n: u32, a: f32, b: f32 }
${decl}
${LINEAR_MAIN}
  if (i >= p.n) { return; }
  let v = x[i];
  ${target}[i] = ${expr};
}`;
}

/**
 * A binary op `out = expr(u, v)` with `u = x[i]`, `v = y[i]`; `target` names the binding the
 * result goes to (in place into `x` or `y`, which is then the only writable binding), and
 * `sameInputs` reads both operands from `x` (one binding when `x` and `y` are one tensor).
 */
function binaryShader(expr: string, target: Target = "out", sameInputs = false): string {
  const lines: string[] = [];
  let n = 0;
  const bind = (name: string, writable: boolean) =>
    lines.push(
      `@group(0) @binding(${n++}) var<storage, ${writable ? "read_write" : "read"}> ${name}: ` +
        `array<f32>; // (n)`,
    );
  bind("x", target === "x");
  if (!sameInputs) bind("y", target === "y");
  if (target === "out") bind("out", true);
  lines.push(`@group(0) @binding(${n}) var<uniform> p: P;`);
  return `
struct P { n: u32, a: f32, b: f32 }
${lines.join("\n")}
${LINEAR_MAIN}
  if (i >= p.n) { return; }
  let u = x[i];
  let v = ${sameInputs ? "x" : "y"}[i];
  ${target === "y" && sameInputs ? "x" : target}[i] = ${expr};
}`;
}

// tanh-approximated GELU (as GPT-2 / "gelu_new"), written with exp so it stays finite.
const GELU_FN = `
fn tanh_safe(z: f32) -> f32 { let e = exp(-2.0 * abs(z)); return sign(z) * (1.0 - e) / (1.0 + e); }
`;
const GELU_K = "0.7978845608028654"; // sqrt(2/pi)

const GELU_GRAD_FN = `fn gelu_grad(x: f32) -> f32 {
  let t = tanh_safe(${GELU_K} * (x + 0.044715 * x * x * x));
  return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * ${GELU_K} * (1.0 + 3.0 * 0.044715 * x * x);
}
`;

/** Each op: its arity, expression, and helper functions it needs. */
const OPS = {
  scale: { arity: 1, expr: "p.a * v", prelude: "" },
  relu: { arity: 1, expr: "max(v, 0.0)", prelude: "" },
  fill: { arity: 1, expr: "p.a", prelude: "" },
  gelu: {
    arity: 1,
    expr: `0.5 * v * (1.0 + tanh_safe(${GELU_K} * (v + 0.044715 * v * v * v)))`,
    prelude: GELU_FN,
  },
  add: { arity: 2, expr: "u + v", prelude: "" },
  sub: { arity: 2, expr: "u - v", prelude: "" },
  mul: { arity: 2, expr: "u * v", prelude: "" },
  axpy: { arity: 2, expr: "p.a * u + v", prelude: "" },
  // x = dy, y = pre-activation input
  reluBackward: { arity: 2, expr: "select(0.0, u, v > 0.0)", prelude: "" },
  geluBackward: { arity: 2, expr: "u * gelu_grad(v)", prelude: GELU_FN + GELU_GRAD_FN },
} as const;

/** True when two tensors are exactly the same region; throws on a partial overlap. */
function same(op: string, a: Tensor, b: Tensor): boolean {
  if (a.buffer !== b.buffer) return false;
  if (a.byteOffset === b.byteOffset && a.byteLength === b.byteLength) return true;
  const overlap = a.byteOffset < b.byteOffset + b.byteLength &&
    b.byteOffset < a.byteOffset + a.byteLength;
  checkShape(!overlap, `${op}: operands partially overlap in one buffer`);
  return false;
}

function sameSize(op: string, ...ts: Tensor[]): void {
  for (const t of ts) {
    checkShape(t.dtype === "f32", `${op}: expects f32 tensors, got ${t.dtype}`);
    checkShape(
      t.size === ts[0].size,
      `${op}: element counts differ ([${ts[0].shape.join(", ")}] vs [${t.shape.join(", ")}])`,
    );
  }
}

function runUnary(gpu: Gpu, op: keyof typeof OPS, x: Tensor, out: Tensor | undefined, a = 0) {
  const y = out ?? gpu.empty(x.shape);
  sameSize(op, x, y);
  const inPlace = same(op, x, y);
  gpu.dispatch(
    gpu.pipeline(OPS[op].prelude + unaryShader(OPS[op].expr, inPlace ? "x" : "out")),
    inPlace ? [x] : [x, y],
    gpu.grid(groups(x.size)),
    new Params().u32(x.size).f32(a, 0),
  );
  return y;
}

function runBinary(
  gpu: Gpu,
  op: keyof typeof OPS,
  x: Tensor,
  y: Tensor,
  out: Tensor | undefined,
  a = 0,
) {
  const o = out ?? gpu.empty(x.shape);
  sameSize(op, x, y, o);
  const xy = same(op, x, y);
  const target: Target = same(op, o, x) ? "x" : same(op, o, y) ? "y" : "out";
  const bindings = [x, ...(xy ? [] : [y]), ...(target === "out" ? [o] : [])];
  gpu.dispatch(
    gpu.pipeline(OPS[op].prelude + binaryShader(OPS[op].expr, target, xy)),
    bindings,
    gpu.grid(groups(x.size)),
    new Params().u32(x.size).f32(a, 0),
  );
  return o;
}

/**
 * `out = a + b`.
 *
 * @example
 * ```ts
 * import { add, Gpu } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const s = add(gpu, gpu.fromArray([1, 2]), gpu.fromArray([3, 4]));
 * console.log(await gpu.read(s)); // [4, 6]
 * ```
 */
export function add(gpu: Gpu, a: Tensor, b: Tensor, out?: Tensor): Tensor {
  return runBinary(gpu, "add", a, b, out);
}

/** `out = a − b`. */
export function sub(gpu: Gpu, a: Tensor, b: Tensor, out?: Tensor): Tensor {
  return runBinary(gpu, "sub", a, b, out);
}

/** `out = a ⊙ b` (elementwise product). */
export function mul(gpu: Gpu, a: Tensor, b: Tensor, out?: Tensor): Tensor {
  return runBinary(gpu, "mul", a, b, out);
}

/** `y ← alpha·x + y` (in place on `y` unless `out` is given). */
export function axpy(gpu: Gpu, alpha: number, x: Tensor, y: Tensor, out?: Tensor): Tensor {
  return runBinary(gpu, "axpy", x, y, out ?? y, alpha);
}

/** `out = s·x`. */
export function scale(gpu: Gpu, x: Tensor, s: number, out?: Tensor): Tensor {
  return runUnary(gpu, "scale", x, out, s);
}

/** Sets every element of `t` to `value` (in place). */
export function fill(gpu: Gpu, t: Tensor, value: number): Tensor {
  return runUnary(gpu, "fill", t, t, value); // in place: one writable binding
}

/** `out = max(x, 0)`. */
export function relu(gpu: Gpu, x: Tensor, out?: Tensor): Tensor {
  return runUnary(gpu, "relu", x, out);
}

/** `dx = dy ⊙ [x > 0]`, where `x` is the ReLU's input. */
export function reluBackward(gpu: Gpu, dy: Tensor, x: Tensor, out?: Tensor): Tensor {
  return runBinary(gpu, "reluBackward", dy, x, out);
}

/** GELU, tanh approximation: `½x(1 + tanh(√(2/π)(x + 0.044715x³)))`. */
export function gelu(gpu: Gpu, x: Tensor, out?: Tensor): Tensor {
  return runUnary(gpu, "gelu", x, out);
}

/** `dx = dy ⊙ gelu'(x)`. */
export function geluBackward(gpu: Gpu, dy: Tensor, x: Tensor, out?: Tensor): Tensor {
  return runBinary(gpu, "geluBackward", dy, x, out);
}

const CAST_F16_TO_F32 = `
struct P { n: u32 }
@group(0) @binding(0) var<storage, read> src: array<u32>; // (ceil(n / 2)) packed halves
@group(0) @binding(1) var<storage, read_write> out: array<f32>; // (n)
@group(0) @binding(2) var<uniform> p: P;
${LINEAR_MAIN}
  if (i >= p.n) { return; }
  let pair = unpack2x16float(src[i / 2u]);
  out[i] = select(pair.x, pair.y, (i & 1u) == 1u);
}`;

const CAST_F32_TO_F16 = `
struct P { n: u32 }
@group(0) @binding(0) var<storage, read> src: array<f32>; // (n)
@group(0) @binding(1) var<storage, read_write> out: array<u32>; // (ceil(n / 2))
@group(0) @binding(2) var<uniform> p: P;
${LINEAR_MAIN}
  if (2u * i >= p.n) { return; }
  let hi = select(0.0, src[2u * i + 1u], 2u * i + 1u < p.n);
  out[i] = pack2x16float(vec2f(src[2u * i], hi));
}`;

/**
 * Unpacks IEEE half floats (two per `u32`, little-endian, as in safetensors F16) into f32.
 *
 * @example
 * ```ts
 * import { castF16ToF32, Gpu } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const packed = gpu.fromArray(new Uint32Array([0x4000_3c00])); // [1.0, 2.0] as f16
 * console.log(await gpu.read(castF16ToF32(gpu, packed, [2]))); // [1, 2]
 * ```
 */
export function castF16ToF32(gpu: Gpu, packed: Tensor, shape: readonly number[]): Tensor {
  const out = gpu.empty(shape);
  checkShape(
    packed.size === Math.ceil(out.size / 2),
    `castF16ToF32: ${packed.size} words cannot hold [${shape.join(", ")}] as f16`,
  );
  gpu.dispatch(
    gpu.pipeline(CAST_F16_TO_F32),
    [packed, out],
    gpu.grid(groups(out.size)),
    new Params().u32(out.size),
  );
  return out;
}

/** Packs f32 values into IEEE half floats, two per `u32` (round to nearest even). */
export function castF32ToF16(gpu: Gpu, x: Tensor): Tensor {
  const out = gpu.empty([Math.ceil(x.size / 2)], "u32");
  gpu.dispatch(
    gpu.pipeline(CAST_F32_TO_F16),
    [x, out],
    gpu.grid(groups(out.size)),
    new Params().u32(x.size),
  );
  return out;
}

const CONCAT = `
struct P { n: u32, Ta: u32, Tb: u32 }
@group(0) @binding(0) var<storage, read> a: array<u32>;   // (B, Ta)
@group(0) @binding(1) var<storage, read> b: array<u32>;   // (B, Tb)
@group(0) @binding(2) var<storage, read_write> out: array<u32>; // (B, Ta + Tb)
@group(0) @binding(3) var<uniform> p: P;
${LINEAR_MAIN}
  if (i >= p.n) { return; }
  let T = p.Ta + p.Tb;
  let r = i / T;
  let c = i % T;
  out[i] = select(b[r * p.Tb + c - p.Ta], a[r * p.Ta + c], c < p.Ta);
}`;

/**
 * Concatenates two `(B, Ta)` and `(B, Tb)` tensors of the same 4-byte dtype along the last
 * axis (e.g. prompt and response tokens).
 *
 * @example
 * ```ts
 * import { concatColumns, Gpu } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const c = concatColumns(gpu, gpu.fromArray([1, 2], [2, 1]), gpu.fromArray([3, 4, 5, 6], [2, 2]));
 * console.log(await gpu.read(c)); // [1, 3, 4, 2, 5, 6]
 * ```
 */
export function concatColumns(gpu: Gpu, a: Tensor, b: Tensor): Tensor {
  checkShape(
    a.shape.length === 2 && b.shape.length === 2 && a.shape[0] === b.shape[0] &&
      a.dtype === b.dtype,
    `concatColumns: needs (B, Ta) and (B, Tb) of one dtype, got ${a.dtype} [${a.shape}] and ${b.dtype} [${b.shape}]`,
  );
  const [B, Ta] = a.shape, Tb = b.shape[1];
  const out = gpu.empty([B, Ta + Tb], a.dtype);
  gpu.dispatch(
    gpu.pipeline(CONCAT),
    [a, b, out],
    gpu.grid(groups(out.size)),
    new Params().u32(out.size, Ta, Tb),
  );
  return out;
}
