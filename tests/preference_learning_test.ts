/**
 * Learning with the direct preference methods on the built-in task, on a CI budget: one short
 * SFT per seed (300 steps at lr 3e-3), then DPO, SimPO and KTO from that same SFT checkpoint on
 * comparisons of its own samples (200 prompts × 4), 100 steps each; gold of 256 fresh samples
 * before and after. The full-size runs (900 SFT steps, 300 method steps) are measured in the
 * README; these bounds are for the short runs and were measured on seeds 1 and 2.
 */
import { Gpu } from "../kernels/runtime.ts";
import { DPO_PIPELINE, KTO_PIPELINE, PREFERENCE_PRESETS } from "../trainer/builtin_preference.ts";
import { resolveSections } from "../trainer/config.ts";
import type { PipelineDefinition, PipelineHooks, PipelineSummary } from "../trainer/pipeline.ts";
import { runPipeline } from "../trainer/pipeline.ts";
import { assert } from "./assert.ts";

const gpu = await Gpu.create();

/** Pipeline checkpoints in memory, so that the methods share one SFT run. */
function memoryHooks(files: Map<string, Uint8Array | string>): PipelineHooks {
  return {
    saveCheckpoint: (stage, f) => {
      files.set(`${stage}/config.json`, f.config);
      files.set(`${stage}/model.safetensors`, f.weights);
      return Promise.resolve();
    },
    loadState: (name) => Promise.resolve(files.get(name)),
    saveState: () => Promise.resolve(),
  };
}

const SHORT = {
  "sft.steps": 300,
  "sft.lr": 3e-3,
  "data.prompts": 200,
  "run.evalSamples": 4,
};

async function run(
  // deno-lint-ignore no-explicit-any
  def: PipelineDefinition<any, any>,
  overrides: Record<string, unknown>,
  sft: Map<string, Uint8Array | string>,
): Promise<PipelineSummary> {
  const cfg = resolveSections(def.sections, { ...SHORT, ...overrides }, def.defaults);
  const files = new Map(sft);
  const summary = await runPipeline(def, gpu, cfg, memoryHooks(files), { resume: sft.size > 0 });
  if (sft.size === 0) { for (const [k, v] of files) if (k.startsWith("sft/")) sft.set(k, v); }
  return summary;
}

for (const seed of [1, 2]) {
  Deno.test({
    name:
      `preference learning: DPO, SimPO and KTO from one short SFT raise gold on the built-in task (seed ${seed})`,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn() {
      const sft = new Map<string, Uint8Array | string>();
      const rows: string[] = [];
      const results: Record<string, PipelineSummary> = {};
      for (
        const [method, def, section] of [
          ["dpo", DPO_PIPELINE, "dpo"],
          ["simpo", DPO_PIPELINE, "dpo"],
          ["kto", KTO_PIPELINE, "kto"],
        ] as const
      ) {
        const s = await run(def, {
          ...PREFERENCE_PRESETS[method].overrides,
          "run.seed": seed,
          [`${section}.steps`]: 100,
        }, sft);
        results[method] = s;
        rows.push(
          `${method}: gold ${s["gold/before"].toFixed(3)} → ${s["gold/after"].toFixed(3)}, ` +
            `correct ${s["gold/correct/before"].toFixed(3)} → ${
              s["gold/correct/after"].toFixed(3)
            }, KL ${s["objective/kl"].toFixed(2)}`,
        );
      }
      console.log(`seed ${seed}:\n  ${rows.join("\n  ")}`);
      for (const [method, s] of Object.entries(results)) {
        const gain = s["gold/after"] - s["gold/before"];
        assert(gain >= 0.05, `${method}: gold gain ${gain.toFixed(3)} < 0.05`);
        assert(s["objective/kl"] <= 10, `${method}: KL ${s["objective/kl"]}`);
        assert(!s.reward_hacking?.detected, `${method}: reward hacking detected`);
      }
    },
  });
}
