import { OPT_PRESETS } from "../../model/config.ts";
import { generate } from "../../model/generate.ts";
import { OptModel } from "../../model/opt.ts";
import { ShapeError } from "../../kernels/errors.ts";
import type { Gpu } from "../../kernels/runtime.ts";
import { assert, assertClose, assertEquals, assertThrows } from "../assert.ts";
import { type Case, rng } from "../_util.ts";

export const cases: Case[] = [];

const B = 3, Tp = 5, G = 7;

function prompts() {
  const r = rng(5);
  const tokens = new Int32Array(B * Tp), mask = new Float32Array(B * Tp);
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < Tp; t++) {
      const pad = t < b; // row b has b left pads
      mask[b * Tp + t] = pad ? 0 : 1;
      tokens[b * Tp + t] = pad ? 1 : t === b ? 2 : 4 + Math.floor(r() * 200);
    }
  }
  return { tokens, mask };
}

/** Greedy decoding by re-running the full forward pass on the whole sequence each step. */
async function fullForwardGreedy(gpu: Gpu, model: OptModel, eos: number) {
  const { tokens, mask } = prompts();
  const V = model.config.vocab_size;
  const seqs = Array.from(
    { length: B },
    (_, b) => Array.from(tokens.subarray(b * Tp, (b + 1) * Tp)),
  );
  const masks = Array.from(
    { length: B },
    (_, b) => Array.from(mask.subarray(b * Tp, (b + 1) * Tp)),
  );
  const logps = Array.from({ length: B }, () => [] as number[]);
  const done = new Array(B).fill(false);
  for (let t = 0; t < G; t++) {
    const T = Tp + t;
    const acts = model.forward(
      gpu.fromArray(Int32Array.from(seqs.flat()), [B, T]),
      gpu.fromArray(Float32Array.from(masks.flat()), [B, T]),
    );
    const logits = await gpu.readF32(model.logits(acts));
    model.disposeActivations(acts);
    for (let b = 0; b < B; b++) {
      const row = logits.subarray((b * T + T - 1) * V, (b * T + T) * V);
      let best = 0;
      for (let i = 1; i < V; i++) if (row[i] > row[best]) best = i;
      const mx = row[best];
      const lse = mx + Math.log(row.reduce((s, z) => s + Math.exp(z - mx), 0));
      if (done[b]) {
        seqs[b].push(1);
        masks[b].push(0);
        logps[b].push(0);
      } else {
        seqs[b].push(best);
        masks[b].push(1);
        logps[b].push(row[best] - lse);
        if (best === eos) done[b] = true;
      }
    }
  }
  return { tokens: seqs.flat(), masks: masks.flat(), logps: logps.flat() };
}

function model(gpu: Gpu, label: "pre" | "post") {
  const c = {
    ...OPT_PRESETS.tiny,
    do_layer_norm_before: label === "pre",
    word_embed_proj_dim: label === "pre" ? 32 : 16,
  };
  const m = OptModel.create(gpu, c, { seed: 21 });
  m.store.init(21, 0.25); // large weights: decisive argmaxes
  return m;
}

for (const label of ["pre", "post"] as const) {
  cases.push({
    name:
      `generate (${label}-LN): KV-cache greedy decoding equals full-forward greedy, with and without EOS`,
    async run(gpu) {
      const m = model(gpu, label);
      const { tokens, mask } = prompts();
      const want = await fullForwardGreedy(gpu, m, -1);
      const out = await generate(m, gpu.fromArray(tokens, [B, Tp]), gpu.fromArray(mask, [B, Tp]), {
        maxNewTokens: G,
        greedy: true,
        eosId: -1,
      });
      assertEquals(out.generated, G);
      assertEquals(await gpu.read(out.tokens), want.tokens, "tokens");
      assertEquals(await gpu.read(out.attentionMask), want.masks, "attention mask");
      assertClose(
        await gpu.readF32(out.logprobs),
        want.logps,
        { atol: 1e-4, rtol: 1e-4 },
        "logprobs",
      );
      // stop at the token row 1 produced at step 2
      const eos = want.tokens[1 * (Tp + G) + Tp + 2];
      const wantEos = await fullForwardGreedy(gpu, m, eos);
      const outEos = await generate(
        m,
        gpu.fromArray(tokens, [B, Tp]),
        gpu.fromArray(mask, [B, Tp]),
        {
          maxNewTokens: G,
          greedy: true,
          eosId: eos,
          padId: 1,
        },
      );
      assertEquals(await gpu.read(outEos.tokens), wantEos.tokens, "tokens with EOS");
      const resp = await gpu.read(outEos.responseMask);
      assertEquals(
        Array.from(resp),
        wantEos.masks.map((v, i) => (i % (Tp + G) < Tp ? 0 : v)),
        "response mask stops after EOS",
      );
      m.store.dispose();
    },
  });
}

cases.push({
  name:
    "generate: sampling is reproducible from the seed; early stop trims columns; bad prompts are named",
  async run(gpu) {
    const m = model(gpu, "pre");
    const { tokens, mask } = prompts();
    const run = (seed: number, extra = {}) =>
      generate(m, gpu.fromArray(tokens, [B, Tp]), gpu.fromArray(mask, [B, Tp]), {
        maxNewTokens: G,
        temperature: 1,
        topK: 20,
        topP: 0.95,
        seed,
        eosId: -1,
        ...extra,
      });
    const a = await gpu.read((await run(7)).tokens);
    // generation takes its KV caches from the texture pool without zeroing them (it writes
    // every row before reading it): pool caches of its size full of NaN first
    for (const cache of m.createKvCaches(B, Tp + G - 1)) {
      const nan = gpu.fromArray(
        new Float32Array(B * cache.H * cache.capacity * cache.Dh).fill(NaN),
        [B, cache.H, cache.capacity, cache.Dh],
      );
      cache.write(nan, nan, 0);
      cache.destroy();
    }
    const b = await gpu.read((await run(7)).tokens);
    const c = await gpu.read((await run(8)).tokens);
    assertEquals(a, b, "same seed, same tokens (the second over NaN-poisoned pool textures)");
    assert(a.some((x, i) => x !== c[i]), "another seed differs");
    // with a check after every token, generation stops once every row has emitted EOS
    const free = await fullForwardGreedy(gpu, m, -1);
    const gen = (r: number) => free.tokens.slice(r * (Tp + G) + Tp, (r + 1) * (Tp + G));
    // the EOS candidate that makes all rows finish earliest
    let eos = -1, expected = G + 1;
    for (const cand of new Set(gen(0))) {
      const stops = [0, 1, 2].map((r) => gen(r).indexOf(cand));
      if (stops.every((s) => s >= 0) && Math.max(...stops) + 1 < expected) {
        expected = Math.max(...stops) + 1;
        eos = cand;
      }
    }
    if (eos < 0) {
      eos = gen(0)[0];
      expected = G; // some row never emits it: no early stop
    }
    const early = await generate(m, gpu.fromArray(tokens, [B, Tp]), gpu.fromArray(mask, [B, Tp]), {
      maxNewTokens: G,
      greedy: true,
      eosId: eos,
      checkEvery: 1,
    });
    assertEquals(early.generated, expected, `columns generated with EOS ${eos}`);
    assertEquals(early.tokens.shape, [B, Tp + expected]);
    assertEquals(early.logprobs.shape, [B, expected]);
    // rows with one prompt stop together, at the first emission of their second token: the stop
    // lands on the first check point after it (its flags are read while the next stretch is
    // encoded, or at the end), and the kept tokens are those of the unstopped run
    const same = Int32Array.from({ length: B * Tp }, (_, i) => tokens[i % Tp]);
    const ones = new Float32Array(B * Tp).fill(1);
    const greedy = (eosId: number, checkEvery: number) =>
      generate(m, gpu.fromArray(same, [B, Tp]), gpu.fromArray(ones, [B, Tp]), {
        maxNewTokens: G,
        greedy: true,
        eosId,
        checkEvery,
      });
    const whole = await gpu.read((await greedy(-1, 1)).tokens);
    const stopEos = whole[Tp + 1], stop = Array.from(whole.slice(Tp, Tp + G)).indexOf(stopEos) + 1;
    assert(stop <= 2, "the second token's first emission");
    for (const [every, want] of [[1, stop], [3, 3], [4, 4], [8, G]]) {
      const g = await greedy(stopEos, every);
      assertEquals(g.generated, want, `columns generated with checks every ${every}`);
      const got = await gpu.read(g.tokens);
      for (let r = 0; r < B; r++) {
        assertEquals(
          Array.from(got.slice(r * (Tp + want), r * (Tp + want) + Tp + stop)),
          Array.from(whole.slice(0, Tp + stop)),
          `row ${r}, checks every ${every}`,
        );
      }
    }
    await assertThrows(
      () =>
        generate(m, gpu.fromArray(tokens, [B, Tp]), gpu.fromArray(mask, [B, Tp]), {
          maxNewTokens: 200,
        }),
      ShapeError,
      "exceed max_position_embeddings",
    );
    m.store.dispose();
  },
});
