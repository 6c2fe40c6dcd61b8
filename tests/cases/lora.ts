import { OPT_PRESETS } from "../../model/config.ts";
import { type LoraConfig, loraLinearName } from "../../model/lora.ts";
import { OptModel } from "../../model/opt.ts";
import { optLogitsRef } from "../../model/reference.ts";
import { ShapeError } from "../../kernels/errors.ts";
import { ModelConfigError } from "../../model/config.ts";
import { loadPeftAdapter, savePeftAdapter } from "../../model/peft.ts";
import { parseSafetensors } from "../../model/safetensors.ts";
import type { Gpu } from "../../kernels/runtime.ts";
import { assert, assertClose, assertEquals, assertThrows } from "../assert.ts";
import { type Case, dot, randArray, rng } from "../_util.ts";

export const cases: Case[] = [];

const C = { ...OPT_PRESETS.tiny, vocab_size: 41 };
const LORA: LoraConfig = {
  r: 3,
  alpha: 6,
  targets: ["q_proj", "v_proj", "out_proj", "fc1", "fc2", "k_proj"],
};
const B = 2, T = 5;
const r0 = rng(9);
const TOKENS = Int32Array.from(
  { length: B * T },
  (_, i) => (i === 0 ? 1 : i % T === 1 || i === T ? 2 : 3 + Math.floor(r0() * 38)),
);
const MASK = Float32Array.from({ length: B * T }, (_, i) => (i === 0 ? 0 : 1));

/** A model with large random base weights and random (non-zero) adapters. */
async function setup(gpu: Gpu) {
  const model = OptModel.create(gpu, C, { seed: 4 });
  model.store.init(4, 0.2);
  const base = await model.store.toHost();
  const lo = model.attachLora(LORA, 5);
  lo.store.specs.forEach((s, i) =>
    lo.store.set(s.name, randArray(s.shape[0] * s.shape[1], 50 + i, -0.3, 0.3))
  );
  return { model, base, lo };
}

/** Host base weights with the adapters merged in float64: W + (α/r)·B·A. */
function merged(base: Map<string, Float32Array>, lora: Map<string, ArrayLike<number>>) {
  const out = new Map<string, Float64Array>([...base].map(([k, v]) => [k, Float64Array.from(v)]));
  const s = LORA.alpha / LORA.r;
  for (let l = 0; l < C.num_hidden_layers; l++) {
    for (const t of LORA.targets) {
      const name = loraLinearName(l, t);
      const W = out.get(`${name}.weight`)!, A = lora.get(`${name}.lora_A.weight`)!;
      const Bm = lora.get(`${name}.lora_B.weight`)!;
      const inp = A.length / LORA.r, o = Bm.length / LORA.r;
      for (let i = 0; i < o; i++) {
        for (let j = 0; j < inp; j++) {
          let acc = 0;
          for (let k = 0; k < LORA.r; k++) acc += Bm[i * LORA.r + k] * A[k * inp + j];
          W[i * inp + j] += s * acc;
        }
      }
    }
  }
  return out;
}

async function logits(gpu: Gpu, model: OptModel) {
  const acts = model.forward(gpu.fromArray(TOKENS, [B, T]), gpu.fromArray(MASK, [B, T]));
  const l = await gpu.readF32(model.logits(acts));
  model.disposeActivations(acts);
  return l;
}

cases.push({
  name:
    "lora: adapted forward equals the reference with W + (α/r)·B·A; disabled equals the base model",
  async run(gpu) {
    const { model, base, lo } = await setup(gpu);
    const want = optLogitsRef(C, merged(base, await lo.store.toHost()), TOKENS, MASK, B, T);
    assertClose(await logits(gpu, model), want, { atol: 2e-4, rtol: 2e-4 }, "adapted logits");
    lo.enabled = false;
    const b64 = new Map([...base].map(([k, v]) => [k, Float64Array.from(v)]));
    assertClose(await logits(gpu, model), optLogitsRef(C, b64, TOKENS, MASK, B, T), {
      atol: 2e-4,
      rtol: 2e-4,
    }, "disabled");
  },
});

cases.push({
  name: "lora: A and B gradients equal reference finite differences; base weights get none",
  async run(gpu) {
    const { model, base, lo } = await setup(gpu);
    const N = B * T, V = C.vocab_size;
    const w = randArray(N * V, 77);
    model.store.zeroGrads();
    lo.store.zeroGrads();
    const acts = model.forward(gpu.fromArray(TOKENS, [B, T]), gpu.fromArray(MASK, [B, T]));
    model.backward(acts, { dlogits: gpu.fromArray(w, [N, V]) });
    const grads = await lo.store.toHost("grads");
    const host = new Map([...(await lo.store.toHost())].map(([k, v]) => [k, Float64Array.from(v)]));
    const loss = () => dot(w, optLogitsRef(C, merged(base, host), TOKENS, MASK, B, T));
    const h = 1e-5;
    for (const [name, g] of grads) {
      const p = host.get(name)!, p0 = Float64Array.from(p);
      const dir = Float64Array.from(randArray(g.length, name.length), (x) => (x < 0 ? -1 : 1));
      const at = (sgn: number) => {
        for (let i = 0; i < p.length; i++) p[i] = p0[i] + sgn * h * dir[i];
        const l = loss();
        p.set(p0);
        return l;
      };
      assertClose(
        [dot(g, dir)],
        [(at(1) - at(-1)) / (2 * h)],
        { atol: 2e-3, rtol: 2e-3 },
        `${name} (directional)`,
      );
    }
    const baseGrads = await model.store.toHost("grads");
    for (const [name, g] of baseGrads) {
      if (name.includes("layer_norm")) continue; // layernorm backward always writes its (unused) grads
      assert(g.every((x) => x === 0), `frozen ${name} received a gradient`);
    }
  },
});

cases.push({
  name:
    "lora: merged equals unmerged; unmerge restores W; a training step leaves the base bit-identical",
  async run(gpu) {
    const { model, base, lo } = await setup(gpu);
    const unmerged = await logits(gpu, model);
    model.mergeLora();
    assertClose(
      await logits(gpu, model),
      unmerged,
      { atol: 1e-5, rtol: 1e-5 },
      "merged vs unmerged",
    );
    model.unmergeLora();
    const restored = await model.store.toHost();
    for (const [k, v] of base) {
      assertClose(restored.get(k)!, v, { atol: 1e-6, rtol: 0 }, `unmerged ${k}`);
    }
    await assertThrows(() => model.unmergeLora(), ShapeError, "not merged");
    // train the adapters only; restore the exact base first (unmerge rounds)
    for (const [k, v] of base) model.store.set(k, v);
    const N = B * T, V = C.vocab_size;
    const before = await lo.store.toHost();
    for (let step = 0; step < 3; step++) {
      lo.store.zeroGrads();
      const acts = model.forward(gpu.fromArray(TOKENS, [B, T]), gpu.fromArray(MASK, [B, T]));
      model.backward(acts, { dlogits: gpu.fromArray(randArray(N * V, step), [N, V]) });
      lo.store.adamw({ lr: 1e-2 });
      model.disposeActivations(acts);
    }
    const after = await model.store.toHost();
    for (const [k, v] of base) assertEquals(after.get(k)!, v, `base ${k} bit-identical`);
    const changed = [...(await lo.store.toHost())].filter(([k, v]) =>
      v.some((x, i) => x !== before.get(k)![i])
    );
    assertEquals(changed.length, lo.store.specs.length, "every adapter moved");
  },
});

cases.push({
  name: "lora: a fresh adapter (B = 0) leaves the model unchanged; bad configs are named",
  async run(gpu) {
    const model = OptModel.create(gpu, C, { seed: 8 });
    const plain = await logits(gpu, model);
    model.attachLora({ r: 4, alpha: 8, targets: ["q_proj", "fc2"] }, 1);
    assertEquals(await logits(gpu, model), plain, "B = 0 at init");
    const other = OptModel.create(gpu, C, { seed: 8 });
    await assertThrows(
      () => other.attachLora({ r: 0, alpha: 1, targets: ["q_proj"] }),
      ShapeError,
      "rank",
    );
    await assertThrows(
      () => other.attachLora({ r: 2, alpha: 1, targets: ["gate_proj" as "q_proj"] }),
      ShapeError,
      "unknown LoRA target",
    );
  },
});

cases.push({
  name: "lora: a PEFT adapter (adapter_config.json + adapter_model.safetensors) round-trips with " +
    "PEFT's names; adapters it cannot apply exactly are named errors",
  async run(gpu) {
    const { model, base } = await setup(gpu);
    const files = await savePeftAdapter(model, { baseModel: "facebook/opt-tiny" });
    const cfg = JSON.parse(files.config);
    assertEquals(
      [cfg.peft_type, cfg.r, cfg.lora_alpha, cfg.target_modules, cfg.base_model_name_or_path],
      ["LORA", LORA.r, LORA.alpha, LORA.targets, "facebook/opt-tiny"],
    );
    // PEFT's naming rule for OPTForCausalLM: base_model.model. + the HF module path
    const names = [...parseSafetensors(files.weights).tensors.keys()];
    const rule =
      /^base_model\.model\.model\.decoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|fc1|fc2)\.lora_[AB]\.weight$/;
    assert(names.every((n) => rule.test(n)), `names off PEFT's rule: ${names.slice(0, 3)}`);
    assert(
      names.includes("base_model.model.model.decoder.layers.0.self_attn.q_proj.lora_A.weight"),
    );
    assertEquals(names.length, 2 * LORA.targets.length * C.num_hidden_layers);

    // the same base with the loaded adapter computes the same logits, adapted and merged
    const other = OptModel.create(gpu, C, { seed: 4 });
    for (const [k, v] of base) other.store.set(k, v);
    const loaded = loadPeftAdapter(other, files.config, files.weights);
    assertEquals([loaded.r, loaded.alpha, loaded.baseModel], [
      LORA.r,
      LORA.alpha,
      "facebook/opt-tiny",
    ]);
    const want = await logits(gpu, model);
    assertEquals(Array.from(await logits(gpu, other)), Array.from(want), "adapter logits");
    other.mergeLora();
    assertClose(await logits(gpu, other), want, { atol: 1e-5, rtol: 1e-5 }, "merged adapter");

    const fresh = () => {
      const m = OptModel.create(gpu, C, { seed: 4 });
      return m;
    };
    const withCfg = (patch: Record<string, unknown>) => JSON.stringify({ ...cfg, ...patch });
    const refuse = (config: string, weights: Uint8Array, what: string) =>
      assertThrows(() => loadPeftAdapter(fresh(), config, weights), ModelConfigError, what);
    await refuse(withCfg({ peft_type: "IA3" }), files.weights, 'peft_type must be "LORA"');
    await refuse(withCfg({ use_dora: true }), files.weights, "use_dora");
    await refuse(withCfg({ use_rslora: true }), files.weights, "use_rslora");
    await refuse(withCfg({ target_modules: "q_proj|v_proj" }), files.weights, "regex");
    await refuse(withCfg({ target_modules: ["gate_proj"] }), files.weights, "gate_proj");
    await refuse(withCfg({ rank_pattern: { "q_proj": 8 } }), files.weights, "rank_pattern");
    await refuse(withCfg({ r: 5 }), files.weights, "has shape");
    await refuse(withCfg({ target_modules: ["q_proj"] }), files.weights, "does not describe");
    const qOnly = fresh();
    qOnly.attachLora({ ...LORA, targets: ["q_proj"] });
    const qFiles = await savePeftAdapter(qOnly);
    await refuse(files.config, qFiles.weights, "lacks");
    await refuse("{", files.weights, "not valid JSON");
    await assertThrows(() => savePeftAdapter(fresh()), ModelConfigError, "no LoRA adapters");
    // a deeper base than the adapter's: its extra layers' tensors are missing
    const deep = OptModel.create(gpu, { ...C, num_hidden_layers: C.num_hidden_layers + 1 });
    await assertThrows(
      () => loadPeftAdapter(deep, files.config, files.weights),
      ModelConfigError,
      "lacks",
    );
    for (const m of [model, other, qOnly, deep]) {
      m.lora?.store.dispose();
      m.store.dispose();
    }
  },
});
