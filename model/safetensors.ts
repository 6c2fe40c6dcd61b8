/**
 * safetensors reader and writer (the Hugging Face format), validated as SPEC §6 requires:
 * an 8-byte little-endian header length N (≤ 100 MB), N bytes of UTF-8 JSON
 * `{name: {dtype, shape, data_offsets: [begin, end)}, "__metadata__"?: {str: str}}`, then the
 * data. Sorted by offset the tensors must tile the data exactly: contiguous from 0, each
 * `end − begin = numel·dtype size`, the last end equal to the data length.
 *
 * Runtime-agnostic: works on a `Uint8Array` (a file's bytes in Deno, a fetched or uploaded
 * `ArrayBuffer` in a browser).
 *
 * @module
 */

/** Raised for a malformed safetensors file or a bad request; the message names the problem. */
export class SafetensorsError extends Error {
  /**
   * Creates the error.
   * @param message what is malformed, with the tensor name or header offset
   */
  constructor(message: string) {
    super(message);
    this.name = "SafetensorsError";
  }
}

/** Element types of the format, with their byte sizes. */
export const DTYPE_SIZES = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
} as const satisfies Record<SafetensorsDType, number>;

/** A safetensors dtype name. */
export type SafetensorsDType =
  | "F64"
  | "F32"
  | "F16"
  | "BF16"
  | "I64"
  | "I32"
  | "I16"
  | "I8"
  | "U8"
  | "BOOL";

/** One tensor of a parsed file: its header entry and a view of its bytes. */
export interface SafetensorsEntry {
  /** Element type as written in the header. */
  dtype: SafetensorsDType;
  /** Shape as written in the header. */
  shape: number[];
  /** The raw little-endian bytes (a view into the file). */
  bytes: Uint8Array;
}

/** A parsed file. */
export interface SafetensorsFile {
  /** Every tensor of the file, by name. */
  tensors: Map<string, SafetensorsEntry>;
  /** The header's `__metadata__` strings. */
  metadata: Record<string, string>;
}

const MAX_HEADER = 100_000_000;

/**
 * Parses and validates a safetensors file.
 *
 * @example
 * ```ts
 * import { parseSafetensors, writeSafetensors } from "../mod.ts";
 * const bytes = writeSafetensors([{ name: "w", shape: [2], data: new Float32Array([1, 2]) }]);
 * const file = parseSafetensors(bytes);
 * console.log(file.tensors.get("w")?.shape); // [2]
 * ```
 */
export function parseSafetensors(input: Uint8Array | ArrayBuffer): SafetensorsFile {
  const bytes = input instanceof Uint8Array ? input : new Uint8Array(input);
  if (bytes.length < 8) {
    throw new SafetensorsError(
      `file is ${bytes.length} bytes, shorter than the 8-byte header size`,
    );
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = Number(dv.getBigUint64(0, true));
  if (n > MAX_HEADER) throw new SafetensorsError(`header size ${n} exceeds 100 MB`);
  if (8 + n > bytes.length) {
    throw new SafetensorsError(
      `header size ${n} runs past the end of the ${bytes.length}-byte file`,
    );
  }
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, 8 + n)));
  } catch (e) {
    throw new SafetensorsError(`header is not valid UTF-8 JSON: ${(e as Error).message}`);
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) {
    throw new SafetensorsError("header must be a JSON object");
  }
  const data = bytes.subarray(8 + n);
  const metadata: Record<string, string> = {};
  const spans: { name: string; begin: number; end: number; size: number }[] = [];
  const tensors = new Map<string, SafetensorsEntry>();
  for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
    if (name === "__metadata__") {
      if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
        throw new SafetensorsError("__metadata__ must be an object of strings");
      }
      for (const [k, v] of Object.entries(raw)) {
        if (typeof v !== "string") throw new SafetensorsError(`__metadata__.${k} is not a string`);
        metadata[k] = v;
      }
      continue;
    }
    const e = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof e !== "object" || e === null) {
      throw new SafetensorsError(`tensor "${name}": entry is not an object`);
    }
    if (typeof e.dtype !== "string" || !(e.dtype in DTYPE_SIZES)) {
      throw new SafetensorsError(`tensor "${name}": unknown dtype ${JSON.stringify(e.dtype)}`);
    }
    const shape = e.shape;
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw new SafetensorsError(`tensor "${name}": shape ${JSON.stringify(shape)} is invalid`);
    }
    const off = e.data_offsets;
    if (
      !Array.isArray(off) || off.length !== 2 ||
      !off.every((o) => Number.isSafeInteger(o) && o >= 0) || off[0] > off[1]
    ) {
      throw new SafetensorsError(`tensor "${name}": data_offsets ${JSON.stringify(off)} invalid`);
    }
    const dtype = e.dtype as SafetensorsDType;
    const size = shape.reduce((a: number, b: number) => a * b, 1) * DTYPE_SIZES[dtype];
    if (off[1] - off[0] !== size) {
      throw new SafetensorsError(
        `tensor "${name}": ${off[1] - off[0]} bytes for ${dtype} [${shape}] (needs ${size})`,
      );
    }
    spans.push({ name, begin: off[0], end: off[1], size });
    tensors.set(name, { dtype, shape: shape as number[], bytes: data.subarray(off[0], off[1]) });
  }
  spans.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let pos = 0;
  for (const s of spans) {
    if (s.begin !== pos) {
      throw new SafetensorsError(
        `tensor "${s.name}" starts at byte ${s.begin}, expected ${pos} (tensors must be contiguous)`,
      );
    }
    pos = s.end;
  }
  if (pos !== data.length) {
    throw new SafetensorsError(
      `tensors cover ${pos} bytes but the data section has ${data.length}`,
    );
  }
  return { tensors, metadata };
}

/** IEEE half → float. */
export function f16ToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/** Float → IEEE half bits (round to nearest even). */
export function f32ToF16(x: number): number {
  const f = new Float32Array([x]), u = new Uint32Array(f.buffer)[0];
  const sign = (u >>> 16) & 0x8000, exp = (u >>> 23) & 0xff, mant = u & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    const m = mant | 0x800000, shift = 14 - e;
    let h = m >>> shift;
    const rem = m & ((1 << shift) - 1), half = 1 << (shift - 1);
    if (rem > half || (rem === half && (h & 1))) h++;
    return sign | h;
  }
  let h = sign | (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1))) h++;
  return h;
}

/**
 * A tensor's values as `Float32Array`, converting F16, BF16 and F64 (the float dtypes a model
 * checkpoint may use). Integer dtypes are an error.
 */
export function toFloat32(entry: SafetensorsEntry, name = "tensor"): Float32Array {
  const { bytes, dtype } = entry;
  const n = bytes.length / DTYPE_SIZES[dtype];
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(n);
  switch (dtype) {
    case "F32":
      for (let i = 0; i < n; i++) out[i] = dv.getFloat32(4 * i, true);
      return out;
    case "F16":
      for (let i = 0; i < n; i++) out[i] = f16ToF32(dv.getUint16(2 * i, true));
      return out;
    case "BF16": {
      const u = new Uint32Array(1), f = new Float32Array(u.buffer);
      for (let i = 0; i < n; i++) {
        u[0] = dv.getUint16(2 * i, true) << 16;
        out[i] = f[0];
      }
      return out;
    }
    case "F64":
      for (let i = 0; i < n; i++) out[i] = dv.getFloat64(8 * i, true);
      return out;
    default:
      throw new SafetensorsError(`${name}: dtype ${dtype} is not a float type`);
  }
}

/** A tensor to write. */
export interface TensorToWrite {
  /** Tensor name. */
  name: string;
  /** Shape (row-major). */
  shape: readonly number[];
  /** Values; F32 or I32 by type. */
  data: Float32Array | Int32Array;
  /** Stored dtype (default F32 for Float32Array, I32 for Int32Array; F16 converts). */
  dtype?: "F32" | "F16" | "I32";
}

/**
 * Serialises tensors (in the given order) with optional string metadata. The JSON header is
 * padded with spaces to a multiple of 8 bytes.
 */
export function writeSafetensors(
  tensors: readonly TensorToWrite[],
  metadata?: Record<string, string>,
): Uint8Array {
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length) header.__metadata__ = metadata;
  let offset = 0;
  const parts: { at: number; t: TensorToWrite; dtype: "F32" | "F16" | "I32" }[] = [];
  for (const t of tensors) {
    if (t.name === "__metadata__" || t.name in header) {
      throw new SafetensorsError(`duplicate or reserved tensor name "${t.name}"`);
    }
    const n = t.shape.reduce((a, b) => a * b, 1);
    if (n !== t.data.length) {
      throw new SafetensorsError(`tensor "${t.name}": ${t.data.length} values for [${t.shape}]`);
    }
    const dtype = t.dtype ?? (t.data instanceof Int32Array ? "I32" : "F32");
    if ((dtype === "I32") !== (t.data instanceof Int32Array)) {
      throw new SafetensorsError(`tensor "${t.name}": dtype ${dtype} does not match its array`);
    }
    const size = n * DTYPE_SIZES[dtype];
    header[t.name] = { dtype, shape: [...t.shape], data_offsets: [offset, offset + size] };
    parts.push({ at: offset, t, dtype });
    offset += size;
  }
  let json = JSON.stringify(header);
  const enc = new TextEncoder();
  let hb = enc.encode(json);
  const pad = (8 - (hb.length % 8)) % 8;
  json += " ".repeat(pad);
  hb = enc.encode(json);
  const out = new Uint8Array(8 + hb.length + offset);
  const dv = new DataView(out.buffer);
  dv.setBigUint64(0, BigInt(hb.length), true);
  out.set(hb, 8);
  const base = 8 + hb.length;
  for (const { at, t, dtype } of parts) {
    const d = t.data;
    for (let i = 0; i < d.length; i++) {
      if (dtype === "F32") dv.setFloat32(base + at + 4 * i, d[i], true);
      else if (dtype === "I32") dv.setInt32(base + at + 4 * i, d[i], true);
      else dv.setUint16(base + at + 2 * i, f32ToF16(d[i]), true);
    }
  }
  return out;
}
