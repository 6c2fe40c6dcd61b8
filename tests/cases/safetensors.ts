import {
  f16ToF32,
  f32ToF16,
  parseSafetensors,
  SafetensorsError,
  toFloat32,
  writeSafetensors,
} from "../../model/safetensors.ts";
import { assert, assertEquals, assertThrows } from "../assert.ts";
import { type Case, randArray } from "../_util.ts";

export const cases: Case[] = [];

function build(header: unknown, data: Uint8Array, headerLen?: number): Uint8Array {
  const hb = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + hb.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerLen ?? hb.length), true);
  out.set(hb, 8);
  out.set(data, 8 + hb.length);
  return out;
}

cases.push({
  name: "safetensors: F32/I32/F16 round trip with metadata; header padded to 8 bytes",
  run() {
    const w = randArray(7 * 3, 1);
    const bytes = writeSafetensors([
      { name: "model.decoder.layers.0.fc1.weight", shape: [7, 3], data: w },
      { name: "ids", shape: [2], data: new Int32Array([-5, 7]) },
      { name: "half", shape: [3], data: new Float32Array([1, -0.1, 65504]), dtype: "F16" },
      { name: "empty", shape: [0, 4], data: new Float32Array(0) },
    ], { format: "pt" });
    const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    assertEquals(n % 8, 0, "header length multiple of 8");
    const f = parseSafetensors(bytes);
    assertEquals(f.metadata, { format: "pt" });
    const e = f.tensors.get("model.decoder.layers.0.fc1.weight")!;
    assertEquals([e.dtype, e.shape], ["F32", [7, 3]]);
    assertEquals(toFloat32(e), w, "f32 data");
    const ids = f.tensors.get("ids")!;
    assertEquals(Array.from(new Int32Array(ids.bytes.slice().buffer)), [-5, 7], "i32 data");
    assertEquals(toFloat32(f.tensors.get("half")!), [1, f16ToF32(0xae66), 65504], "f16 data");
    assertEquals(f.tensors.get("empty")!.shape, [0, 4]);
    // BF16: the top 16 bits of an f32
    const bf = build(
      { x: { dtype: "BF16", shape: [2], data_offsets: [0, 4] } },
      new Uint8Array([0x80, 0x3f, 0x40, 0xc0]),
    );
    assertEquals(toFloat32(parseSafetensors(bf).tensors.get("x")!), [1, -3], "bf16");
  },
});

cases.push({
  name: "safetensors: malformed files get named errors",
  async run() {
    const ok = { a: { dtype: "F32", shape: [2], data_offsets: [0, 8] } };
    const d8 = new Uint8Array(8);
    const bad: [string, Uint8Array, string][] = [
      ["short", new Uint8Array(4), "shorter than the 8-byte header"],
      ["huge header", build(ok, d8, 200_000_000), "exceeds 100 MB"],
      ["past end", build(ok, d8, 5000), "runs past the end"],
      [
        "not json",
        (() => {
          const b = build(ok, d8);
          b[8] = 0x7b + 1;
          return b;
        })(),
        "not valid UTF-8 JSON",
      ],
      [
        "dtype",
        build({ a: { dtype: "F12", shape: [2], data_offsets: [0, 8] } }, d8),
        "unknown dtype",
      ],
      ["size", build({ a: { dtype: "F32", shape: [3], data_offsets: [0, 8] } }, d8), "needs 12"],
      ["shape", build({ a: { dtype: "F32", shape: [-2], data_offsets: [0, 8] } }, d8), "shape"],
      ["gap", build({ a: { dtype: "F32", shape: [1], data_offsets: [4, 8] } }, d8), "contiguous"],
      ["trailing", build(ok, new Uint8Array(12)), "data section has 12"],
      [
        "overlap",
        build({
          a: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
          b: { dtype: "F32", shape: [1], data_offsets: [4, 8] },
        }, d8),
        "contiguous",
      ],
      ["metadata", build({ __metadata__: { x: 1 }, ...ok }, d8), "__metadata__.x"],
    ];
    for (const [what, bytes, msg] of bad) {
      await assertThrows(() => parseSafetensors(bytes), SafetensorsError, msg).catch((e) => {
        throw new Error(`${what}: ${e.message}`);
      });
    }
    await assertThrows(
      () => writeSafetensors([{ name: "x", shape: [3], data: new Float32Array(2) }]),
      SafetensorsError,
      "2 values for [3]",
    );
  },
});

cases.push({
  name: "safetensors: f16 conversions round-trip every finite half exactly",
  run() {
    let checked = 0;
    for (let h = 0; h < 0x10000; h++) {
      const x = f16ToF32(h);
      if (Number.isNaN(x)) continue;
      const back = f32ToF16(x);
      // +0 and -0 both survive; everything else maps to itself
      assert(back === h, `half 0x${h.toString(16)} → ${x} → 0x${back.toString(16)}`);
      checked++;
    }
    assertEquals(checked, 0x10000 - 2046, "finite halves and infinities");
    assertEquals(f32ToF16(1 + 2 ** -11), 0x3c00, "ties round to even");
    assertEquals(f32ToF16(1e6), 0x7c00, "overflow to infinity");
  },
});
