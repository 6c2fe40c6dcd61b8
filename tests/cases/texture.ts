import { type Block, fillTexture, fillTextures } from "../../kernels/_texture.ts";
import type { Gpu } from "../../kernels/runtime.ts";
import { assertEquals } from "../assert.ts";
import { type Case, randArray } from "../_util.ts";

export const cases: Case[] = [];

/** The texels `[layers][dstRow0 … dstRow0 + height)[width]` of a texture, as floats. */
async function texels(gpu: Gpu, tex: GPUTexture, b: Block): Promise<number[]> {
  const bytesPerRow = Math.ceil((16 * b.width) / 256) * 256;
  const out = gpu.empty([(bytesPerRow / 4) * b.height * b.layers]);
  gpu.encoder().copyTextureToBuffer(
    { texture: tex, origin: { x: 0, y: b.dstRow0 ?? 0, z: 0 } },
    { buffer: out.buffer, offset: out.byteOffset, bytesPerRow, rowsPerImage: b.height },
    [b.width, b.height, b.layers],
  );
  const all = await gpu.readF32(out);
  const kept: number[] = [];
  for (let l = 0; l < b.layers; l++) {
    for (let r = 0; r < b.height; r++) {
      const row = (l * b.height + r) * (bytesPerRow / 4);
      kept.push(...all.subarray(row, row + 4 * b.width));
    }
  }
  return kept;
}

const block = (o: Partial<Block> & Pick<Block, "rows" | "cols" | "ld">): Block => ({
  trans: false,
  row0: 0,
  col0: 0,
  batchStride: 0,
  batch0: 0,
  layers: 1,
  width: Math.ceil(o.cols / 4),
  height: o.rows,
  ...o,
});

cases.push({
  name: "texture packing: several blocks in one dispatch (1–5 of them: transposed, ragged, " +
    "strided, offset rows, padded, batched) give the texels of one dispatch each",
  async run(gpu) {
    const src = gpu.fromArray(randArray(3 * 17 * 23, 71, -3, 3), [3 * 17 * 23]);
    const blocks: Block[] = [
      block({ rows: 17, cols: 23, ld: 23 }), // ragged columns
      block({ rows: 7, cols: 9, ld: 17, trans: true, row0: 2, col0: 5, width: 4, height: 12 }),
      block({ rows: 17, cols: 23, ld: 23, batchStride: 17 * 23, batch0: 1, layers: 2 }),
      block({ rows: 5, cols: 6, ld: 23, row0: 3, col0: 4, dstRow0: 9, height: 8 }),
      block({ rows: 3, cols: 8, ld: 23, height: 8, zeroPadRows: true }), // zeroed K padding
    ];
    for (let n = 1; n <= blocks.length; n++) {
      const jobs = blocks.slice(0, n).map((b) => ({
        src,
        tex: gpu.scratchTexture(b.width, (b.dstRow0 ?? 0) + b.height, b.layers),
        block: b,
      }));
      const alone = jobs.map((j) => ({
        ...j,
        tex: gpu.scratchTexture(
          j.block.width,
          (j.block.dstRow0 ?? 0) + j.block.height,
          j.block.layers,
        ),
      }));
      for (const j of alone) fillTexture(gpu, j.src, j.tex, j.block);
      fillTextures(gpu, jobs);
      for (let i = 0; i < n; i++) {
        assertEquals(
          await texels(gpu, jobs[i].tex, jobs[i].block),
          await texels(gpu, alone[i].tex, alone[i].block),
          `${n} blocks: block ${i}`,
        );
      }
      for (const j of [...jobs, ...alone]) gpu.releaseTexture(j.tex);
    }
  },
});

cases.push({
  name: "texture packing: large blocks of whole aligned texels (packed a vec4 at a time) hold " +
    "the block's values and zeros around it (offset rows and columns, strided, batched, padded, " +
    "a ones column)",
  async run(gpu) {
    const data = randArray(4 * 80 * 52, 72, -3, 3);
    const src = gpu.fromArray(data, [data.length]);
    const blocks: Block[] = [
      // > 2 048 texels each: too large to share a dispatch, so packed by whole texels
      block({
        rows: 70,
        cols: 44,
        ld: 52,
        row0: 3,
        col0: 8,
        batchStride: 52 * 80,
        batch0: 1,
        layers: 3,
        width: 12, // one texel past the block
        height: 72, // two rows past it
        dstRow0: 5,
        zeroPadRows: true,
      }),
      block({ rows: 63, cols: 16, ld: 16, batchStride: 63 * 16, layers: 16 }), // attention heads
      // a B whose K padding rows are zero, padded to 10 texels
      block({ rows: 500, cols: 32, ld: 32, width: 10, height: 504, zeroPadRows: true }),
    ];
    for (const b of blocks) {
      const tex = gpu.scratchTexture(b.width, (b.dstRow0 ?? 0) + b.height, b.layers);
      fillTexture(gpu, src, tex, b);
      const want: number[] = [];
      for (let l = 0; l < b.layers; l++) {
        for (let r = 0; r < b.height; r++) {
          for (let c = 0; c < 4 * b.width; c++) {
            const inside = r < b.rows && c < b.cols;
            want.push(
              inside ? data[(b.batch0 + l) * b.batchStride + (b.row0 + r) * b.ld + b.col0 + c] : 0,
            );
          }
        }
      }
      assertEquals(await texels(gpu, tex, b), want, `${b.rows}×${b.cols} block`);
      gpu.releaseTexture(tex);
    }
  },
});
