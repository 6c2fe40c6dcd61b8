import { NonFiniteValueError } from "../../kernels/errors.ts";
import { loadOptModel, saveOptModel } from "../../model/checkpoint.ts";
import { ModelConfigError, OPT_PRESETS, optParamSpecs } from "../../model/config.ts";
import { OptModel } from "../../model/opt.ts";
import { optLogitsRef } from "../../model/reference.ts";
import {
  f16ToF32,
  f32ToF16,
  parseSafetensors,
  toFloat32,
  writeSafetensors,
} from "../../model/safetensors.ts";
import { assertClose, assertEquals, assertThrows } from "../assert.ts";
import { type Case, randArray } from "../_util.ts";

export const cases: Case[] = [];

const B = 2, T = 4;
const TOKENS = new Int32Array([1, 2, 40, 41, 2, 50, 51, 52]);
const MASK = new Float32Array([0, 1, 1, 1, 1, 1, 1, 1]);

cases.push({
  name: "checkpoint: save → load round trip gives identical logits and values",
  async run(gpu) {
    const model = OptModel.create(gpu, OPT_PRESETS.tiny, { seed: 5, valueHead: true });
    const files = await saveOptModel(model, { step: "7" });
    const { model: back, report } = loadOptModel(gpu, files.config, files.weights);
    assertEquals(report.ignored, [], "nothing ignored");
    assertEquals(report.loaded.length, optParamSpecs(OPT_PRESETS.tiny, { valueHead: true }).length);
    const run = async (m: OptModel) => {
      const acts = m.forward(gpu.fromArray(TOKENS, [B, T]), gpu.fromArray(MASK, [B, T]));
      const r = [await gpu.readF32(m.logits(acts)), await gpu.readF32(m.values(acts))];
      m.disposeActivations(acts);
      return r;
    };
    const [l1, v1] = await run(model), [l2, v2] = await run(back);
    assertEquals(l2, l1, "logits");
    assertEquals(v2, v1, "values");
    assertEquals(JSON.parse(files.config).model_type, "opt");
  },
});

cases.push({
  name:
    "checkpoint: an HF-layout file (no model. prefix, F16, tied lm_head) loads and matches the reference",
  async run(gpu) {
    const c = { ...OPT_PRESETS.tiny, vocab_size: 61, do_layer_norm_before: false };
    const specs = optParamSpecs(c);
    const host = new Map<string, Float64Array>();
    const tensors = specs.map((s, i) => {
      const n = s.shape.reduce((a, b) => a * b, 1);
      const v = Float32Array.from(
        randArray(n, 100 + i),
        (x) => s.init === "ones" ? 1 + 0.1 * x : 0.2 * x,
      );
      // the file stores F16: the reference sees the rounded values
      host.set(s.name, Float64Array.from(v, (x) => f16ToF32(f32ToF16(x))));
      return {
        name: s.name.replace(/^model\./, ""),
        shape: s.shape,
        data: v,
        dtype: "F16" as const,
      };
    });
    const wte = tensors.find((t) => t.name === "decoder.embed_tokens.weight")!;
    tensors.push({ ...wte, name: "lm_head.weight" });
    const weights = writeSafetensors(tensors);
    const config = JSON.stringify({
      ...c,
      model_type: "opt",
      torch_dtype: "float16",
      dropout: 0.1,
    });
    const { model, report } = loadOptModel(gpu, config, weights);
    assertEquals(report.ignored, ["lm_head.weight"]);
    const acts = model.forward(gpu.fromArray(TOKENS, [B, T]), gpu.fromArray(MASK, [B, T]));
    assertClose(
      await gpu.readF32(model.logits(acts)),
      optLogitsRef(c, host, TOKENS, MASK, B, T),
      { atol: 1e-4, rtol: 1e-4 },
      "logits",
    );
  },
});

cases.push({
  name: "checkpoint: missing or mis-shaped tensors and bad configs are named errors",
  async run(gpu) {
    const c = OPT_PRESETS.tiny;
    const full = await saveOptModel(OptModel.create(gpu, c));
    const small = writeSafetensors([{
      name: "decoder.embed_tokens.weight",
      shape: [2],
      data: new Float32Array(2),
    }]);
    await assertThrows(
      () => loadOptModel(gpu, full.config, small),
      ModelConfigError,
      "has shape [2]",
    );
    const one = writeSafetensors([{
      name: "model.decoder.embed_tokens.weight",
      shape: [260, 32],
      data: new Float32Array(260 * 32),
    }]);
    await assertThrows(
      () => loadOptModel(gpu, full.config, one),
      ModelConfigError,
      "checkpoint lacks",
    );
    await assertThrows(
      () => loadOptModel(gpu, "{", full.weights),
      ModelConfigError,
      "not valid JSON",
    );
    await assertThrows(
      () => loadOptModel(gpu, JSON.stringify({ ...c, hidden_size: 30 }), full.weights),
      ModelConfigError,
      "not divisible",
    );
  },
});

cases.push({
  name:
    "checkpoint: non-finite weights, tensors the config lacks and special ids outside the vocabulary are refused",
  async run(gpu) {
    const model = OptModel.create(gpu, OPT_PRESETS.tiny, { seed: 6 });
    const files = await saveOptModel(model);
    model.store.dispose();
    const cfg = JSON.parse(files.config);
    // a NaN in the weights
    const parsed = parseSafetensors(files.weights);
    const tensors = [...parsed.tensors].map(([name, e]) => ({
      name,
      shape: e.shape,
      data: toFloat32(e, name),
    }));
    tensors[3].data[5] = NaN;
    await assertThrows(
      () => loadOptModel(gpu, files.config, writeSafetensors(tensors)),
      NonFiniteValueError,
      `${tensors[3].name}[5] is NaN`,
    );
    tensors[3].data[5] = 0;
    // a config with one layer fewer than the file: the second layer's tensors are not used
    const oneLayer = JSON.stringify({ ...cfg, num_hidden_layers: cfg.num_hidden_layers - 1 });
    await assertThrows(
      () => loadOptModel(gpu, oneLayer, writeSafetensors(tensors)),
      ModelConfigError,
      "tensor(s) this model does not use",
    );
    // special token ids outside the vocabulary
    const badEos = JSON.stringify({ ...cfg, eos_token_id: cfg.vocab_size });
    await assertThrows(
      () => loadOptModel(gpu, badEos, files.weights),
      ModelConfigError,
      "eos_token_id",
    );
  },
});
