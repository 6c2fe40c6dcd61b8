import { OPT_PRESETS, type OptConfig, optParamSpecs } from "../../model/config.ts";
import { OptModel } from "../../model/opt.ts";
import { ParamStore } from "../../model/params.ts";
import { optHiddenRef, optLogitsRef } from "../../model/reference.ts";
import { crossEntropy, crossEntropyBackward } from "../../kernels/softmax.ts";
import { fill } from "../../kernels/elementwise.ts";
import { ShapeError } from "../../kernels/errors.ts";
import { Gpu } from "../../kernels/runtime.ts";
import { assert, assertClose, assertThrows } from "../assert.ts";
import { type Case, dot, randArray, rng } from "../_util.ts";

export const cases: Case[] = [];

const TINY = OPT_PRESETS.tiny;
const CONFIGS: [string, OptConfig][] = [
  ["pre-LN", { ...TINY, vocab_size: 37 }],
  ["post-LN", { ...TINY, vocab_size: 37, do_layer_norm_before: false }],
  ["post-LN with project_in/out", {
    ...TINY,
    vocab_size: 37,
    do_layer_norm_before: false,
    word_embed_proj_dim: 16,
  }],
  ["pre-LN with project_in/out", {
    ...TINY,
    vocab_size: 37,
    word_embed_proj_dim: 24,
    num_hidden_layers: 1,
  }],
];

/** A model whose every parameter (biases and norms included) holds random host values. */
function randomModel(gpu: Gpu, c: OptConfig, seed: number, valueHead = false) {
  const specs = optParamSpecs(c, { valueHead });
  const store = new ParamStore(gpu, specs);
  const host = new Map<string, Float64Array>();
  specs.forEach((s, i) => {
    const n = s.shape.reduce((a, b) => a * b, 1);
    const r = randArray(n, seed * 1000 + i, -1, 1);
    const v = Float32Array.from(
      r,
      (x) => s.init === "ones" ? 1 + 0.2 * x : s.init === "zeros" ? 0.1 * x : 0.3 * x,
    );
    store.set(s.name, v);
    host.set(s.name, Float64Array.from(v));
  });
  return { model: new OptModel(gpu, c, store), host };
}

// Two rows: the first left-padded by 2, the second full length.
function batch(c: OptConfig, B: number, T: number, seed: number) {
  const r = rng(seed);
  const tokens = new Int32Array(B * T), mask = new Float32Array(B * T);
  for (let b = 0; b < B; b++) {
    const pad = b === 0 ? 2 : 0;
    for (let t = 0; t < T; t++) {
      mask[b * T + t] = t < pad ? 0 : 1;
      tokens[b * T + t] = t < pad
        ? c.pad_token_id
        : t === pad
        ? c.bos_token_id
        : 3 + Math.floor(r() * (c.vocab_size - 3));
    }
  }
  return { tokens, mask };
}

async function checkLogits(gpu: Gpu, c: OptConfig) {
  const B = 2, T = 7;
  const { model, host } = randomModel(gpu, c, 1);
  const { tokens, mask } = batch(c, B, T, 2);
  const acts = model.forward(gpu.fromArray(tokens, [B, T]), gpu.fromArray(mask, [B, T]));
  const logits = await gpu.readF32(model.logits(acts));
  // f32 through 2 blocks of width 32 with O(1) activations
  assertClose(
    logits,
    optLogitsRef(c, host, tokens, mask, B, T),
    { atol: 2e-4, rtol: 2e-4 },
    "logits",
  );
  model.disposeActivations(acts);
  model.store.dispose();
}

async function checkGrads(gpu: Gpu, c: OptConfig) {
  const B = 2, T = 5;
  const { model, host } = randomModel(gpu, c, 3, true);
  const { tokens, mask } = batch(c, B, T, 4);
  const N = B * T, V = c.vocab_size, E = c.word_embed_proj_dim;
  const w = randArray(N * V, 5), u = randArray(N, 6);
  // loss = Σ w ⊙ logits + Σ u ⊙ values
  const loss = (P: Map<string, ArrayLike<number>>) => {
    const h = optHiddenRef(c, P, tokens, mask, B, T);
    const wte = P.get("model.decoder.embed_tokens.weight")!, vh = P.get("v_head.weight")!;
    let s = 0;
    for (let n = 0; n < N; n++) {
      for (let v = 0; v < V; v++) {
        let z = 0;
        for (let e = 0; e < E; e++) z += h[n * E + e] * wte[v * E + e];
        s += w[n * V + v] * z;
      }
      let val = 0;
      for (let e = 0; e < E; e++) val += h[n * E + e] * vh[e];
      s += u[n] * val;
    }
    return s;
  };
  model.store.zeroGrads();
  const acts = model.forward(gpu.fromArray(tokens, [B, T]), gpu.fromArray(mask, [B, T]));
  model.backward(acts, { dlogits: gpu.fromArray(w, [N, V]), dvalues: gpu.fromArray(u) });
  const grads = await model.store.toHost("grads");
  const r = rng(7);
  const hstep = 1e-5;
  for (const [name, g] of grads) {
    const p = host.get(name)!;
    // the whole tensor: directional derivative along a random ±1 direction
    const dir = Float64Array.from(
      randArray(g.length, name.length * 31 + 1),
      (x) => (x < 0 ? -1 : 1),
    );
    const p0 = Float64Array.from(p);
    const shifted = (sgn: number) => {
      for (let i = 0; i < p.length; i++) p[i] = p0[i] + sgn * hstep * dir[i];
      const l = loss(host);
      p.set(p0);
      return l;
    };
    const fdDir = (shifted(1) - shifted(-1)) / (2 * hstep);
    assertClose([dot(g, dir)], [fdDir], { atol: 2e-3, rtol: 2e-3 }, `${name} (directional)`);
    // three coordinates per parameter, plus the largest-gradient one
    let big = 0;
    for (let i = 1; i < g.length; i++) if (Math.abs(g[i]) > Math.abs(g[big])) big = i;
    for (const i of [big, ...Array.from({ length: 3 }, () => Math.floor(r() * g.length))]) {
      const v = p[i];
      p[i] = v + hstep;
      const lp = loss(host);
      p[i] = v - hstep;
      const lm = loss(host);
      p[i] = v;
      const fd = (lp - lm) / (2 * hstep);
      assertClose([g[i]], [fd], { atol: 5e-4, rtol: 2e-3 }, `${name}[${i}]`);
    }
  }
  model.disposeActivations(acts);
  model.store.dispose();
}

for (const [label, c] of CONFIGS) {
  cases.push({
    name: `opt (${label}): logits match the float64 reference model with left padding`,
    run: (gpu) => checkLogits(gpu, c),
  });
  cases.push({
    name: `opt (${label}): every named parameter gradient equals reference finite differences`,
    run: (gpu) => checkGrads(gpu, c),
  });
}

cases.push({
  name:
    "opt: a vocabulary too large for one binding is embedded, projected and trained in row chunks",
  async run(gpu: Gpu) {
    // 36 KiB bindings: the 600×32 (75 KiB) or 600×16 embedding splits into chunks; all else fits
    const small = await Gpu.create({ maxBindingBytes: 36864, matmulPath: gpu.matmulPath });
    try {
      for (
        const c of [
          { ...TINY, vocab_size: 600 },
          { ...TINY, vocab_size: 600, do_layer_norm_before: false, word_embed_proj_dim: 16 },
        ]
      ) {
        const probe = OptModel.create(small, c);
        const n = probe.store.param("model.decoder.embed_tokens.weight").rowChunks().length;
        assert(n >= 2, `expected the embedding in several chunks, got ${n}`);
        probe.store.dispose();
        await checkLogits(small, c);
        await checkGrads(small, c);
      }
    } finally {
      small.destroy();
    }
  },
});

cases.push({
  name: "opt: overfitting one batch drives the cross-entropy below 0.15 in 80 AdamW steps",
  async run(gpu) {
    const c = OPT_PRESETS.tiny;
    const model = OptModel.create(gpu, c, { seed: 11 });
    const B = 4, T = 12;
    const r = rng(12);
    const tokens = Int32Array.from(
      { length: B * T },
      (_, i) => i % T === 0 ? 2 : 4 + Math.floor(r() * 60),
    );
    const targets = Int32Array.from(
      { length: B * T },
      (_, i) => (i % T === T - 1 ? -1 : tokens[i + 1]),
    );
    const tTok = gpu.fromArray(tokens, [B, T]),
      tMask = gpu.fromArray(new Float32Array(B * T).fill(1), [B, T]);
    const tTgt = gpu.fromArray(targets);
    const count = targets.filter((t) => t >= 0).length;
    const dloss = gpu.empty([B * T]);
    fill(gpu, dloss, 1 / count);
    const losses: number[] = [];
    for (let step = 0; step < 80; step++) {
      model.store.zeroGrads();
      const acts = model.forward(tTok, tMask);
      const logits = model.logits(acts);
      const ce = crossEntropy(gpu, logits, tTgt);
      if (step === 0 || step === 79) {
        const l = await gpu.readF32(ce.loss);
        losses.push(l.reduce((a, b) => a + b, 0) / count);
      }
      const dlogits = crossEntropyBackward(gpu, logits, tTgt, ce.lse, dloss);
      model.backward(acts, { dlogits });
      model.store.clipGradNorm(1.0);
      model.store.adamw({ lr: 1e-2, weightDecay: 0.0 });
      for (const t of [logits, ce.loss, ce.lse, dlogits]) t.dispose();
      model.disposeActivations(acts);
    }
    assert(losses[0] > 5, `initial loss ${losses[0]} should be near ln(260) = 5.56`);
    assert(losses[1] < 0.15, `final loss ${losses[1]} (from ${losses[0]})`);
    model.store.dispose();
  },
});

cases.push({
  name: "opt: bad inputs get named errors",
  async run(gpu) {
    const model = OptModel.create(gpu, OPT_PRESETS.tiny, { seed: 1 });
    const mask = gpu.fromArray(new Float32Array(3).fill(1), [1, 3]);
    await assertThrows(
      () => model.forward(gpu.fromArray([1, 2, 3], [1, 3]), mask),
      ShapeError,
      "tokens must be i32",
    );
    await assertThrows(
      () => model.forward(gpu.fromArray(new Int32Array(129), [1, 129]), gpu.zeros([1, 129])),
      ShapeError,
      "exceed max_position_embeddings",
    );
    await assertThrows(
      () => model.values(model.forward(gpu.fromArray(new Int32Array(3), [1, 3]), mask)),
      ShapeError,
      "no v_head",
    );
    model.store.dispose();
  },
});

cases.push({
  name: "opt: token log-probs, reward sequence scores and a frozen copy",
  async run(gpu) {
    const c = { ...TINY, vocab_size: 37 };
    const { model, host } = randomModel(gpu, c, 31, true);
    const B = 2, T = 6;
    const { tokens, mask } = batch(c, B, T, 32);
    mask[T + 5] = 0; // row 1 right-padded at the end
    tokens[T + 5] = c.pad_token_id;
    const tt = gpu.fromArray(tokens, [B, T]), tm = gpu.fromArray(mask, [B, T]);
    const acts = model.forward(tt, tm);
    const lp = model.tokenLogprobs(acts);
    const logits = optLogitsRef(c, host, tokens, mask, B, T);
    const V = c.vocab_size;
    const want = new Float64Array(B * T);
    for (let i = 0; i < B * T; i++) {
      const t = i % T;
      if (t + 1 >= T || mask[i + 1] === 0) continue;
      const row = logits.subarray(i * V, (i + 1) * V);
      const mx = Math.max(...row);
      const lse = mx + Math.log(row.reduce((s, z) => s + Math.exp(z - mx), 0));
      want[i] = row[tokens[i + 1]] - lse;
    }
    assertClose(await gpu.readF32(lp.logp), want, { atol: 2e-4, rtol: 2e-4 }, "token logprobs");
    const scores = await gpu.readF32(model.sequenceScores(acts));
    const vals = await gpu.readF32(model.values(acts));
    assertClose(
      scores,
      [vals[T - 1], vals[T + 4]],
      { atol: 0, rtol: 0 },
      "value at the last real token",
    );
    const frozen = model.copy();
    const a2 = frozen.forward(tt, tm);
    assertClose(await gpu.readF32(frozen.logits(a2)), await gpu.readF32(model.logits(acts)), {
      atol: 0,
      rtol: 0,
    }, "copy");
    frozen.store.init(99); // changing the copy leaves the original alone
    assertClose(
      await gpu.readF32(model.logits(model.forward(tt, tm))),
      await gpu.readF32(model.logits(acts)),
      { atol: 0, rtol: 0 },
      "original",
    );
  },
});
