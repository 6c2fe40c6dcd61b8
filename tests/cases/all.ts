/** Every shared case list (kernels, model I/O), in one array (shared by the Deno runner and the browser page). */
import type { Case } from "../_util.ts";
import { cases as attention } from "./attention.ts";
import { cases as checkpoint } from "./checkpoint.ts";
import { cases as elementwise } from "./elementwise.ts";
import { cases as embedding } from "./embedding.ts";
import { cases as generate } from "./generate.ts";
import { cases as group } from "./group.ts";
import { cases as layernorm } from "./layernorm.ts";
import { cases as lora } from "./lora.ts";
import { cases as matmul } from "./matmul.ts";
import { cases as opt } from "./opt.ts";
import { cases as optimizer } from "./optimizer.ts";
import { cases as reduce } from "./reduce.ts";
import { cases as preference } from "./preference.ts";
import { cases as rl } from "./rl.ts";
import { cases as runtime } from "./runtime.ts";
import { cases as safetensors } from "./safetensors.ts";
import { cases as sampling } from "./sampling.ts";
import { cases as softmax } from "./softmax.ts";
import { cases as task } from "./task.ts";
import { cases as texture } from "./texture.ts";
import { cases as tokenizer } from "./tokenizer.ts";

export const ALL_CASES: Case[] = [
  ...runtime,
  ...elementwise,
  ...texture,
  ...matmul,
  ...reduce,
  ...softmax,
  ...layernorm,
  ...embedding,
  ...attention,
  ...optimizer,
  ...sampling,
  ...rl,
  ...group,
  ...preference,
  ...task,
  ...safetensors,
  ...tokenizer,
  ...opt,
  ...checkpoint,
  ...generate,
  ...lora,
];
