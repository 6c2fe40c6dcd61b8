/**
 * The OPT decoder, written as explicit forward and backward passes over our kernels (llm.c
 * style): every activation the backward needs is saved in a {@link OptActivations} record,
 * and the backward accumulates into the {@link ParamStore} gradient views.
 *
 * Matches Hugging Face `OPTForCausalLM`: token embeddings (then `project_in` when
 * `word_embed_proj_dim ≠ hidden_size`) plus learned positions at `cumsum(mask)·mask − 1 + 2`;
 * pre-LN blocks (OPT-125m) or post-LN blocks (OPT-350m); the final layernorm for pre-LN models;
 * `project_out`; the LM head tied to `embed_tokens`; and an optional `v_head` (critic/reward).
 *
 * @module
 */

import {
  attentionBackward,
  attentionBackwardQkv,
  attentionForward,
  type AttentionSaved,
  KvCache,
  swapAxes12,
} from "../kernels/attention.ts";
import { add, reluBackward } from "../kernels/elementwise.ts";
import {
  embeddingForward,
  lastMaskedValues,
  nextTokenTargets,
  positionsFromMask,
  scatterAddRows,
} from "../kernels/embedding.ts";
import { tokenLogprobs } from "../kernels/softmax.ts";
import { checkShape } from "../kernels/errors.ts";
import { layernormBackward, layernormForward, type LayernormSaved } from "../kernels/layernorm.ts";
import { matmul, matmulLayernorm } from "../kernels/matmul.ts";
import type { Gpu, Tensor } from "../kernels/runtime.ts";
import { type OptConfig, optParamSpecs } from "./config.ts";
import { type LoraConfig, loraLinearName, loraParamSpecs } from "./lora.ts";
import { ParamStore } from "./params.ts";

const D = "model.decoder.";

/** LoRA adapters attached to a model. */
export interface LoraState {
  /** Rank, α and targets. */
  config: LoraConfig;
  /** The trainable A/B matrices, with their own gradients and AdamW moments. */
  store: ParamStore;
  /** α / r. */
  scale: number;
  /** When false the adapters are ignored (the base model, e.g. PPO's reference policy). */
  enabled: boolean;
  /** True while merged into the base weights. */
  merged: boolean;
  /** HF names of the adapted linears. */
  targets: Set<string>;
}

/** What one decoder layer's forward saves for its backward (a field of {@link OptActivations}). */
export interface LayerActs {
  /** Block input (N, C) */
  x0: Tensor;
  /** Pre-LN: LN1(x0); post-LN: LN1(x0 + attn) */
  ln1?: { y: Tensor } & LayernormSaved;
  /** What q/k/v read: ln1.y (pre) or x0 (post) */
  attnIn: Tensor;
  /** (B, H, T, Dh) */
  q: Tensor;
  /** Keys `(B, H, T, Dh)`. */
  k: Tensor;
  /** Values `(B, H, T, Dh)`. */
  v: Tensor;
  /** The buffer q, k and v are views of, when one fused projection wrote them. */
  qkv?: Tensor;
  /** What attention saved for its backward. */
  att: AttentionSaved;
  /** (N, C) attention output before out_proj. */
  merged: Tensor;
  /** Post-LN: x0 + out_proj(...) */
  x1pre?: Tensor;
  /** Residual stream after the attention half. */
  x1: Tensor;
  /** Pre-LN: LN2(x1); post-LN: LN2(x1 + ffn). */
  ln2?: { y: Tensor } & LayernormSaved;
  /** Ln2.y (pre) or x1 (post) */
  ffnIn: Tensor;
  /** Relu(fc1(ffnIn)) (N, F) */
  h: Tensor;
  /** Post-LN: x1 + fc2(h) */
  x2pre?: Tensor;
}

/** Everything {@link OptModel.backward} needs from a forward pass. */
export interface OptActivations {
  /** Rows. */
  B: number;
  /** Columns. */
  T: number;
  /** Input ids `(B, T)`. */
  tokens: Tensor;
  /** Attention mask `(B, T)`, 1 = real token. */
  mask: Tensor;
  /** Position ids `(B, T)` (from the mask, OPT-style). */
  positions: Tensor;
  /** (N, E) token embeddings before project_in. */
  tokEmb?: Tensor;
  /** Per-layer saved tensors. */
  layers: LayerActs[];
  /** Decoder stream after the last block. */
  xL: Tensor;
  /** The final layernorm's output and statistics (pre-LN models). */
  lnf?: { y: Tensor } & LayernormSaved;
  /** Lnf.y or xL. */
  preOut: Tensor;
  /** Final hidden states `(B·T, word_embed_proj_dim)` (HF `last_hidden_state`). */
  hidden: Tensor;
  /** LoRA inputs `u = x·Aᵀ` per adapted linear (empty without adapters). */
  loraU: Map<string, Tensor>;
}

/**
 * An OPT decoder bound to its parameters.
 *
 * @example Logits of a tiny random model
 * ```ts
 * import { Gpu, OPT_PRESETS, OptModel } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const model = OptModel.create(gpu, OPT_PRESETS.tiny, { seed: 1 });
 * const tokens = gpu.fromArray(new Int32Array([2, 10, 11, 2, 12, 13]), [2, 3]);
 * const mask = gpu.fromArray(new Float32Array(6).fill(1), [2, 3]);
 * const acts = model.forward(tokens, mask);
 * const logits = model.logits(acts); // (6, 260)
 * ```
 */
export class OptModel {
  /** Attention heads. */
  readonly heads: number;
  /** Head size (hidden / heads). */
  readonly headDim: number;
  /** Attached LoRA adapters (see {@link attachLora}). */
  lora?: LoraState;
  /** When true the base parameters get no gradients (LoRA training). */
  frozenBase = false;

  /** Internal: use {@link OptModel.create} or {@link loadOptModel}. */
  constructor(
    readonly gpu: Gpu,
    readonly config: OptConfig,
    readonly store: ParamStore,
  ) {
    this.heads = config.num_attention_heads;
    this.headDim = config.hidden_size / config.num_attention_heads;
    for (const s of optParamSpecs(config)) {
      checkShape(store.has(s.name), `OptModel: parameter store lacks ${s.name}`);
    }
  }

  /** A model with freshly initialised parameters (N(0, 0.02) weights, seeded). */
  static create(
    gpu: Gpu,
    config: OptConfig,
    opts: { seed?: number; valueHead?: boolean } = {},
  ): OptModel {
    const store = new ParamStore(gpu, optParamSpecs(config, { valueHead: opts.valueHead }));
    store.init(opts.seed ?? 0);
    return new OptModel(gpu, config, store);
  }

  /**
   * Attaches LoRA adapters to the targeted linears of every layer and freezes the base
   * weights: from now on `backward` accumulates gradients only into `lora.store`.
   */
  attachLora(config: LoraConfig, seed = 0): LoraState {
    checkShape(!this.lora, "OptModel.attachLora: adapters are already attached");
    const store = new ParamStore(this.gpu, loraParamSpecs(this.config, config));
    store.init(seed);
    const targets = new Set<string>();
    for (let l = 0; l < this.config.num_hidden_layers; l++) {
      for (const t of config.targets) targets.add(loraLinearName(l, t));
    }
    this.lora = {
      config,
      store,
      scale: config.alpha / config.r,
      enabled: true,
      merged: false,
      targets,
    };
    this.frozenBase = true;
    return this.lora;
  }

  /** Adds (sign 1) or removes (sign −1) `(α/r)·B·A` to/from every adapted base weight. */
  #mergeSign(sign: number): void {
    const lo = this.lora!;
    for (const name of lo.targets) {
      matmul(
        this.gpu,
        lo.store.param(`${name}.lora_B.weight`),
        lo.store.param(`${name}.lora_A.weight`),
        {
          alpha: sign * lo.scale,
          out: this.#p(`${name}.weight`),
          accumulate: true,
        },
      );
    }
  }

  /**
   * Folds the adapters into the base weights (`W += (α/r)·B·A`) and turns the adapter path
   * off, so inference costs nothing extra. {@link unmergeLora} undoes it (up to f32 rounding).
   */
  mergeLora(): void {
    checkShape(
      this.lora !== undefined && !this.lora.merged,
      "OptModel.mergeLora: no unmerged adapters",
    );
    this.#mergeSign(1);
    this.lora!.merged = true;
  }

  /** Subtracts merged adapters from the base weights again. */
  unmergeLora(): void {
    checkShape(this.lora?.merged === true, "OptModel.unmergeLora: adapters are not merged");
    this.#mergeSign(-1);
    this.lora!.merged = false;
  }

  /** The adapter of a linear when one is attached, enabled and not merged. */
  #adapter(name: string): { A: Tensor; B: Tensor; gA: Tensor; gB: Tensor; s: number } | undefined {
    const lo = this.lora;
    if (!lo || !lo.enabled || lo.merged || !lo.targets.has(name)) return undefined;
    return {
      A: lo.store.param(`${name}.lora_A.weight`),
      B: lo.store.param(`${name}.lora_B.weight`),
      gA: lo.store.grad(`${name}.lora_A.weight`),
      gB: lo.store.grad(`${name}.lora_B.weight`),
      s: lo.scale,
    };
  }

  /** True when the model has a `v_head`. */
  get hasValueHead(): boolean {
    return this.store.has("v_head.weight");
  }

  #p(name: string): Tensor {
    return this.store.param(name);
  }
  #g(name: string): Tensor {
    return this.store.grad(name);
  }

  /**
   * `y = x·Wᵀ + b` for the HF linear `name` (bias optional), plus `(α/r)·(x·Aᵀ)·Bᵀ` when a
   * LoRA adapter is active (then `u = x·Aᵀ` is saved in `lu` for the backward).
   */
  #linear(
    x: Tensor,
    name: string,
    opts: { relu?: boolean; bias?: boolean; residual?: Tensor } = {},
    lu?: Map<string, Tensor>,
  ): Tensor {
    const gpu = this.gpu;
    const bias = opts.bias === false ? undefined : this.#p(`${name}.bias`);
    const ad = this.#adapter(name);
    if (!ad) {
      // `residual + (x·Wᵀ + b)` in the epilogue: the bits of add(residual, linear)
      return matmul(gpu, x, this.#p(`${name}.weight`), {
        transB: true,
        bias,
        relu: opts.relu,
        residual: opts.residual,
      });
    }
    if (opts.residual) {
      // with an adapter the residual comes last, as add(residual, y) would add it
      const y = this.#linear(x, name, { relu: opts.relu, bias: opts.bias }, lu);
      return add(gpu, opts.residual, y, y);
    }
    const u = matmul(gpu, x, ad.A, { transB: true }); // (N, r)
    const y = matmul(gpu, x, this.#p(`${name}.weight`), { transB: true, bias });
    // y = relu?(y + (α/r)·u·Bᵀ): the adapter term is the matmul's accumulate epilogue
    matmul(gpu, u, ad.B, { transB: true, alpha: ad.s, out: y, accumulate: true, relu: opts.relu });
    if (lu) lu.set(name, u);
    else u.dispose();
    return y;
  }

  /**
   * q, k and v `(B, H, T, Dh)` of layer prefix `p` from one matmul over the adjacent q/k/v
   * weights, written straight into attention's head layout (the bits of three projections and
   * their head splits: each output sums the same products in the same order). Undefined when
   * an adapter is active on one of them or the store does not hold them adjacently.
   */
  #qkvFused(
    x: Tensor,
    p: string,
    T: number,
    kvCache?: { k: GPUTexture; v: GPUTexture; row: number },
  ): Pick<LayerActs, "q" | "k" | "v" | "qkv"> & { kvWritten: boolean } | undefined {
    const at = this.#qkvSlots(p);
    if (!at) return undefined;
    const { w, b, biasStride } = at;
    const C = this.config.hidden_size, H = this.heads, Dh = this.headDim;
    const gpu = this.gpu, N = x.shape[0];
    const align = gpu.limits.minStorageBufferOffsetAlignment / 4;
    const part = N * C, partStride = Math.ceil(part / align) * align;
    // one buffer for all three must stay bindable; else three projections as before
    if (4 * (2 * partStride + part) > gpu.maxBindingBytes) return undefined;
    const qkv = matmul(gpu, x, this.store.params.view(w, [3 * C, C]), {
      transB: true,
      bias: this.store.params.view(b, [2 * biasStride + C]),
      biasSegments: { width: C, stride: biasStride },
      splitHeads: { T, H, Dh, partStride },
      // k and v straight into the decode caches when the layout allows (else the caller writes)
      kvCache: kvCache && Dh % 4 === 0 ? kvCache : undefined,
    });
    const [q, k, v] = [0, 1, 2].map((i) => qkv.view(i * partStride, [N / T, H, T, Dh]));
    return { q, k, v, qkv, kvWritten: kvCache !== undefined && Dh % 4 === 0 };
  }

  /**
   * Where layer `p`'s q, k and v weights start in the store (and their biases, `biasStride`
   * apart) when they lie side by side and no adapter is active on them; else undefined.
   */
  #qkvSlots(p: string): { w: number; b: number; biasStride: number } | undefined {
    const names = ["q_proj", "k_proj", "v_proj"].map((m) => `${p}self_attn.${m}`);
    if (names.some((n) => this.#adapter(n))) return undefined;
    const C = this.config.hidden_size;
    const slot = (n: string) => this.store.slots.get(n)!;
    const w = names.map((n) => slot(`${n}.weight`)), b = names.map((n) => slot(`${n}.bias`));
    const biasStride = b[1].offset - b[0].offset;
    if (
      w[1].offset !== w[0].offset + C * C || w[2].offset !== w[1].offset + C * C ||
      b[2].offset - b[1].offset !== biasStride || biasStride < C
    ) return undefined;
    return { w: w[0].offset, b: b[0].offset, biasStride };
  }

  /**
   * Backward of the fused q/k/v projection (`#qkvFused`) from attention's output
   * gradient `dAtt` `(B, H, T, Dh)`: the three gradients side by side in one `(N, 3C)` tensor,
   * then one matmul for the three weight gradients, one column sum for the three bias
   * gradients and one K-segmented matmul for the input gradient — the bits of three
   * projections' backward (each sums the same products in the same order). Undefined when the
   * forward was not fused or C is not a multiple of 4 (then the caller runs three).
   */
  #qkvBackward(dAtt: Tensor, a: LayerActs, p: string): Tensor | undefined {
    const C = this.config.hidden_size;
    const at = this.#qkvSlots(p);
    if (!a.qkv || !at || C % 4 !== 0) return undefined;
    const gpu = this.gpu, N = a.attnIn.shape[0];
    const dqkv = attentionBackwardQkv(gpu, dAtt, a.q, a.k, a.v, a.att).intoShape([N, 3 * C]);
    if (!this.frozenBase) {
      // the weight gradients, and the bias gradients as the product's row-sums column
      matmul(gpu, dqkv, a.attnIn, {
        transA: true,
        out: this.store.grads.view(at.w, [3 * C, C]),
        accumulate: true,
        rowSums: {
          out: this.store.grads.view(at.b, [2 * at.biasStride + C]),
          segments: { width: C, stride: at.biasStride },
        },
      });
    }
    const dIn = matmul(gpu, dqkv, this.store.params.view(at.w, [3 * C, C]), { kSegments: C });
    dqkv.dispose();
    return dIn;
  }

  /**
   * Backward of a linear layer: `dW += dyᵀ·x`, `db += Σ dy` (unless the base is frozen), the
   * LoRA gradients `dB += s·dyᵀ·u`, `dA += s·(dy·B)ᵀ·x` when adapted; returns `dx = dy·W`
   * (`+ s·(dy·B)·A`), or adds it into `dxInto`.
   */
  #linearBackward(
    dy: Tensor,
    x: Tensor,
    name: string,
    opts: {
      bias?: boolean;
      dxInto?: Tensor;
      reluBackwardOf?: Tensor;
      /** dx written in a head layout (no adapter on this projection, no `dxInto`). */
      splitHeads?: { T: number; H: number; Dh: number };
    } = {},
    lu?: Map<string, Tensor>,
  ): Tensor {
    const gpu = this.gpu;
    const ad = this.#adapter(name);
    // dx through a ReLU (whose output was `reluBackwardOf`): in the dx matmul's epilogue, or
    // after the LoRA terms are added
    const relu = opts.reluBackwardOf;
    if (!this.frozenBase) {
      // the bias gradient Σ dy as the weight gradient's row-sums column: no dispatch of its own
      matmul(gpu, dy, x, {
        transA: true,
        out: this.#g(`${name}.weight`),
        accumulate: true,
        rowSums: opts.bias !== false ? { out: this.#g(`${name}.bias`) } : undefined,
      });
    }
    const W = this.#p(`${name}.weight`);
    const reluBackwardOf = ad ? undefined : relu;
    checkShape(
      !opts.splitHeads || (!ad && !opts.dxInto),
      `OptModel.backward: ${name}'s dx cannot be head-split with an adapter or into a tensor`,
    );
    const dx = opts.dxInto
      ? matmul(gpu, dy, W, { out: opts.dxInto, accumulate: true, reluBackwardOf })
      : matmul(gpu, dy, W, { reluBackwardOf, splitHeads: opts.splitHeads });
    const u = lu?.get(name);
    if (ad) {
      checkShape(u !== undefined, `OptModel.backward: no saved LoRA input for ${name}`);
      const g = matmul(gpu, dy, ad.B); // (N, r)
      matmul(gpu, dy, u!, { transA: true, alpha: ad.s, out: ad.gB, accumulate: true });
      matmul(gpu, g, x, { transA: true, alpha: ad.s, out: ad.gA, accumulate: true });
      matmul(gpu, g, ad.A, { alpha: ad.s, out: dx, accumulate: true });
      g.dispose();
      if (relu) reluBackward(gpu, dx, relu, dx);
    }
    return dx;
  }

  /**
   * `residual + linear(x)` and the layernorm `lnName` of that sum, in one dispatch where the
   * matmul can carry the norm (see matmulLayernorm; with an adapter, the two steps).
   */
  #linearLn(
    x: Tensor,
    name: string,
    residual: Tensor,
    lnName: string,
    lu?: Map<string, Tensor>,
  ): { out: Tensor; ln: { y: Tensor } & LayernormSaved } {
    if (this.#adapter(name)) {
      const out = this.#linear(x, name, { residual }, lu);
      return { out, ln: this.#ln(out, lnName) };
    }
    return matmulLayernorm(
      this.gpu,
      x,
      this.#p(`${name}.weight`),
      { transB: true, bias: this.#p(`${name}.bias`), residual },
      { weight: this.#p(`${lnName}.weight`), bias: this.#p(`${lnName}.bias`) },
    );
  }

  #ln(x: Tensor, name: string): { y: Tensor } & LayernormSaved {
    return layernormForward(this.gpu, x, this.#p(`${name}.weight`), this.#p(`${name}.bias`));
  }

  /** `dx (+)= LN'(x)ᵀ dy` and accumulates the norm's parameter gradients. */
  #lnBackward(
    dy: Tensor,
    x: Tensor,
    saved: LayernormSaved,
    name: string,
    dx?: Tensor,
  ): Tensor {
    return layernormBackward(
      this.gpu,
      dy,
      x,
      this.#p(`${name}.weight`),
      saved,
      this.frozenBase ? null : this.#g(`${name}.weight`),
      this.frozenBase ? null : this.#g(`${name}.bias`),
      dx ? { dx, accumulateDx: true } : {},
    );
  }

  /**
   * Forward pass over `tokens` `[B, T]` (i32) with `mask` `[B, T]` (f32, 1 = token, 0 = pad;
   * left padding supported). Returns the saved activations; `hidden` holds the final states.
   * With `kvCache` (one per layer, see {@link createKvCaches}), each layer's keys and values
   * are also written at cache rows `[0, T)` for incremental decoding.
   */
  forward(tokens: Tensor, mask: Tensor, opts: { kvCache?: KvCache[] } = {}): OptActivations {
    const gpu = this.gpu, c = this.config;
    checkShape(
      tokens.shape.length === 2 && tokens.dtype === "i32",
      `OptModel.forward: tokens must be i32 [B, T], got ${tokens.dtype} [${tokens.shape}]`,
    );
    const [B, T] = tokens.shape;
    checkShape(
      mask.dtype === "f32" && mask.shape.join() === tokens.shape.join(),
      `OptModel.forward: mask must be f32 [${B}, ${T}], got ${mask.dtype} [${mask.shape}]`,
    );
    checkShape(
      T <= c.max_position_embeddings,
      `OptModel.forward: ${T} tokens exceed max_position_embeddings ${c.max_position_embeddings}`,
    );
    const scale = 1 / Math.sqrt(this.headDim);
    const positions = positionsFromMask(gpu, mask, 2);
    const caches = opts.kvCache;
    // without caches, the q/k/v matmul writes k and v straight into the attention kernels'
    // textures (its KV-cache epilogue), which the forward and backward then read unpacked
    const H = this.heads, dq = this.headDim / 4, side = gpu.textureSide;
    const textures = !caches && this.headDim % 4 === 0 && B * H > 0 && T > 0 &&
      B * H <= gpu.limits.maxTextureArrayLayers && T <= side && dq <= side;
    const written: ({ k: GPUTexture; v: GPUTexture; row: number } | undefined)[] = [];
    const kvFor = caches
      ? (l: number) =>
        T <= caches[l].capacity ? { k: caches[l].k, v: caches[l].v, row: 0 } : undefined
      : textures
      ? (l: number) =>
        written[l] = {
          k: gpu.scratchTexture(dq, T, B * H),
          v: gpu.scratchTexture(dq, T, B * H),
          row: 0,
        }
      : undefined;
    return this.#run(tokens, mask, positions, (l, q, k, v, kvWritten) => {
      // prefill: keep this chunk's keys and values for later decode steps
      if (!kvWritten) caches?.[l].write(k, v, 0);
      const kv = written[l];
      if (kv && !kvWritten) [kv.k, kv.v].forEach((t) => gpu.releaseTexture(t)); // not fused
      const keyValueTextures = kv && kvWritten ? { k: kv.k, v: kv.v } : undefined;
      // the output merged (B, T, H, Dh): the out projection reads it as is, no swap
      const att = attentionForward(gpu, q, k, v, {
        keyMask: mask,
        scale,
        keyValueTextures,
        mergedOut: true,
      });
      // the textures live as long as the saved log-sum-exp (the backward reads both): back to
      // the pool when the activations are disposed, one by one or by a scope
      if (keyValueTextures) att.lse.holdTextures([kv!.k, kv!.v]);
      return att;
    }, kvFor);
  }

  /**
   * One decode step against per-layer KV caches: `tokens` and `positions` are `[B, 1]` (i32;
   * positions already include OPT's offset of 2), their keys/values are written at cache row
   * `at`, and attention covers rows `[0, at]` under `keyMask` `[B, maskStride]`. Returns the
   * activations (only `hidden` is normally used; free them with `disposeActivations`).
   */
  decodeStep(
    tokens: Tensor,
    positions: Tensor,
    caches: KvCache[],
    at: number,
    keyMask: Tensor,
    maskStride: number,
  ): OptActivations {
    checkShape(
      tokens.shape.length === 2 && tokens.shape[1] === 1 &&
        positions.shape.join() === tokens.shape.join(),
      `OptModel.decodeStep: tokens and positions must be [B, 1], got [${tokens.shape}], [${positions.shape}]`,
    );
    checkShape(
      caches.length === this.config.num_hidden_layers,
      "OptModel.decodeStep: one cache per layer",
    );
    const scale = 1 / Math.sqrt(this.headDim);
    const kvFor = (l: number) =>
      at >= 0 && at + 1 <= caches[l].capacity
        ? { k: caches[l].k, v: caches[l].v, row: at }
        : undefined;
    return this.#run(tokens, keyMask, positions, (l, q, k, v, kvWritten) => {
      if (!kvWritten) caches[l].write(k, v, at);
      const out = caches[l].attend(q, at + 1, { keyMask, maskStride, scale });
      return { out, lse: this.gpu.empty([0]), scale, causal: true, keyMask };
    }, kvFor);
  }

  /** The decoder stack over `tokens` `[B, T]` at `positions`, with a pluggable attention. */
  #run(
    tokens: Tensor,
    mask: Tensor,
    positions: Tensor,
    attend: (layer: number, q: Tensor, k: Tensor, v: Tensor, kvWritten: boolean) => AttentionSaved,
    kvFor?: (layer: number) => { k: GPUTexture; v: GPUTexture; row: number } | undefined,
  ): OptActivations {
    const gpu = this.gpu, c = this.config;
    const [B, T] = tokens.shape;
    const N = B * T, C = c.hidden_size, H = this.heads, Dh = this.headDim;
    const wpe = this.#p(`${D}embed_positions.weight`);
    const flatTok = tokens.reshape([N]), flatPos = positions.reshape([N]);
    let x: Tensor, tokEmb: Tensor | undefined;
    if (c.word_embed_proj_dim !== C) {
      tokEmb = this.#embedTokens(flatTok);
      const projected = this.#linear(tokEmb, `${D}project_in`, { bias: false });
      const posEmb = embeddingForward(gpu, flatPos, wpe);
      x = add(gpu, projected, posEmb, projected);
      posEmb.dispose();
    } else {
      x = this.#embedTokens(flatTok, { positions: flatPos, wpe });
    }
    const layers: LayerActs[] = [];
    const lu = new Map<string, Tensor>();
    // (B, T, H, Dh) → (B, H, T, Dh); with one position (a decode step) the layouts coincide
    const heads = (t: Tensor) =>
      T === 1 ? t.intoShape([B, H, 1, Dh]) : swapAxes12(gpu, t.reshape([B, T, H, Dh]));
    const L = c.num_hidden_layers;
    // a norm already computed by the previous matmul's epilogue (the next layer's or the final)
    let pendingLn: ({ y: Tensor } & LayernormSaved) | undefined;
    for (let l = 0; l < L; l++) {
      const p = `${D}layers.${l}.`;
      const a: Partial<LayerActs> = { x0: x };
      const pre = c.do_layer_norm_before;
      if (pre) a.ln1 = pendingLn ?? this.#ln(x, `${p}self_attn_layer_norm`);
      pendingLn = undefined;
      a.attnIn = pre ? a.ln1!.y : x;
      const proj = this.#qkvFused(a.attnIn, p, T, kvFor?.(l)) ?? (() => {
        const [q, k, v] = ["q_proj", "k_proj", "v_proj"].map((m) => {
          const y = this.#linear(a.attnIn!, `${p}self_attn.${m}`, {}, lu);
          const h = heads(y);
          y.dispose();
          return h;
        });
        return { q, k, v, kvWritten: false };
      })();
      const { kvWritten, ...qkv } = proj;
      Object.assign(a, qkv);
      a.att = attend(l, proj.q, proj.k, proj.v, kvWritten);
      a.merged = T === 1 || a.att.mergedOut
        ? a.att.out.reshape([N, C]) // a view: att.out owns the buffer
        : swapAxes12(gpu, a.att.out).intoShape([N, C]);
      // x1 = x + out_proj(merged), the residual added in the matmul's epilogue, and the norm
      // after it (pre-LN: the FFN's input norm; post-LN: this sum's norm) in the same dispatch
      const outLn = `${p}${pre ? "final_layer_norm" : "self_attn_layer_norm"}`;
      const o = this.#linearLn(a.merged, `${p}self_attn.out_proj`, x, outLn, lu);
      if (pre) {
        a.x1 = o.out;
        a.ln2 = o.ln;
      } else {
        a.x1pre = o.out;
        a.ln1 = o.ln;
        a.x1 = a.ln1.y;
      }
      a.ffnIn = pre ? a.ln2!.y : a.x1;
      a.h = this.#linear(a.ffnIn, `${p}fc1`, { relu: true }, lu);
      // x2 = x1 + fc2(h) and the norm after it: post-LN this layer's, pre-LN the next layer's
      // input norm or the final norm
      const fLn = !pre
        ? `${p}final_layer_norm`
        : l + 1 < L
        ? `${D}layers.${l + 1}.self_attn_layer_norm`
        : `${D}final_layer_norm`;
      const f = this.#linearLn(a.h, `${p}fc2`, a.x1, fLn, lu);
      if (pre) {
        x = f.out;
        pendingLn = f.ln;
      } else {
        a.x2pre = f.out;
        a.ln2 = f.ln;
        x = a.ln2.y;
      }
      layers.push(a as LayerActs);
    }
    const xL = x;
    let lnf: ({ y: Tensor } & LayernormSaved) | undefined;
    if (c.do_layer_norm_before) lnf = pendingLn ?? this.#ln(xL, `${D}final_layer_norm`);
    const preOut = lnf ? lnf.y : xL;
    const hidden = c.word_embed_proj_dim !== C
      ? this.#linear(preOut, `${D}project_out`, { bias: false })
      : preOut;
    return { B, T, tokens, mask, positions, tokEmb, layers, xL, lnf, preOut, hidden, loraU: lu };
  }

  /**
   * Creates one {@link KvCache} per layer for `B` rows and `capacity` positions (`zeroed`: see
   * the KvCache constructor).
   */
  createKvCaches(B: number, capacity: number, opts: { zeroed?: boolean } = {}): KvCache[] {
    return Array.from(
      { length: this.config.num_hidden_layers },
      () => new KvCache(this.gpu, B, this.heads, capacity, this.headDim, opts),
    );
  }

  /** Row chunks of the token embedding (one unless it exceeds the binding limit). */
  #wteChunks(which: "param" | "grad" = "param") {
    const name = `${D}embed_tokens.weight`;
    return (which === "param" ? this.#p(name) : this.#g(name)).rowChunks();
  }

  /** Token embeddings (plus positions), looked up chunk by chunk for a huge vocabulary. */
  #embedTokens(flatTok: Tensor, pos?: { positions: Tensor; wpe: Tensor }): Tensor {
    const chunks = this.#wteChunks();
    const E = this.config.word_embed_proj_dim;
    let out: Tensor | undefined;
    chunks.forEach((ch, i) => {
      out = embeddingForward(this.gpu, flatTok, ch.view, i === 0 ? pos : undefined, {
        firstRow: ch.row0,
        out: out ?? this.gpu.empty([flatTok.size, E]),
        accumulate: i > 0,
      });
    });
    return out!;
  }

  /**
   * Copies rows `[r0, r0 + rows)` of a row-major `(R, N)` tensor into a new `(rows, N)` one
   * (a buffer copy: no alignment constraint beyond 4 bytes).
   */
  #rowsCopy(t: Tensor, r0: number, rows: number): Tensor {
    const N = t.shape[1];
    const out = this.gpu.empty([rows, N]);
    this.gpu.encoder().copyBufferToBuffer(
      t.buffer,
      t.byteOffset + 4 * r0 * N,
      out.buffer,
      out.byteOffset,
      4 * rows * N,
    );
    return out;
  }

  /**
   * LM-head logits `(B·T, V)` from the final hidden states (tied to `embed_tokens`). A
   * vocabulary too large for one binding is multiplied chunk by chunk into `logitsᵀ`, then
   * transposed.
   */
  logits(acts: OptActivations): Tensor {
    return this.logitsOf(acts.hidden);
  }

  /** LM-head logits `(N, V)` of any `(N, word_embed_proj_dim)` hidden states. */
  logitsOf(hidden: Tensor): Tensor {
    const gpu = this.gpu, V = this.config.vocab_size;
    const N = hidden.shape[0];
    const chunks = this.#wteChunks();
    if (chunks.length === 1) return matmul(gpu, hidden, chunks[0].view, { transB: true });
    const logitsT = gpu.empty([V, N]);
    for (const ch of chunks) {
      const part = matmul(gpu, ch.view, hidden, { transB: true }); // (rows, N)
      gpu.encoder().copyBufferToBuffer(
        part.buffer,
        part.byteOffset,
        logitsT.buffer,
        logitsT.byteOffset + 4 * ch.row0 * N,
        4 * ch.rows * N,
      );
      part.dispose();
    }
    const logits = swapAxes12(gpu, logitsT.reshape([1, V, N, 1])).intoShape([N, V]);
    logitsT.dispose();
    return logits;
  }

  /**
   * Per-token log-probabilities of the sequence's own next tokens: `logp[b, t] =
   * log p(tokens[b, t + 1] | tokens[b, ≤ t])` (0 where there is no real next token), with the
   * entropy of each position's distribution, and the logits/targets/lse needed to backpropagate
   * (`logitsBackward`). Shapes `(B, T)`; the caller disposes what it does not keep.
   */
  tokenLogprobs(acts: OptActivations): {
    logp: Tensor;
    entropy: Tensor;
    lse: Tensor;
    logits: Tensor;
    targets: Tensor;
  } {
    const { B, T } = acts;
    const logits = this.logits(acts);
    const targets = nextTokenTargets(this.gpu, acts.tokens, acts.mask).intoShape([B * T]);
    const r = tokenLogprobs(this.gpu, logits, targets);
    return {
      logp: r.logp.intoShape([B, T]),
      entropy: r.entropy.intoShape([B, T]),
      lse: r.lse,
      logits,
      targets,
    };
  }

  /**
   * Sequence scores of a reward model: the value at each row's last real token (its EOS when
   * present), `(B)`.
   */
  sequenceScores(acts: OptActivations): Tensor {
    const v = this.values(acts).intoShape([acts.B, acts.T]);
    const r = lastMaskedValues(this.gpu, v, acts.mask);
    v.dispose();
    r.index.dispose();
    return r.values;
  }

  /**
   * A frozen copy of the model's current weights (e.g. PPO's reference policy when the actor
   * has no LoRA): a new parameter store filled by a GPU buffer copy.
   */
  copy(opts: { frozen?: boolean } = {}): OptModel {
    checkShape(!this.lora?.merged, "OptModel.copy: unmerge LoRA adapters first");
    const store = new ParamStore(this.gpu, this.store.specs, opts);
    this.gpu.copy(this.store.params, store.params);
    return new OptModel(this.gpu, this.config, store);
  }

  /** Values `(B·T)` from `v_head` (critic / reward model). */
  values(acts: OptActivations): Tensor {
    checkShape(this.hasValueHead, "OptModel.values: this model has no v_head");
    const N = acts.B * acts.T;
    return matmul(this.gpu, acts.hidden, this.#p("v_head.weight"), { transB: true })
      .intoShape([N]);
  }

  /**
   * Backward pass: accumulates parameter gradients from the gradient of the logits
   * (`(B·T, V)`), of the values (`(B·T)`), and/or of the hidden states directly.
   */
  backward(
    acts: OptActivations,
    grads: { dlogits?: Tensor; dvalues?: Tensor; dhidden?: Tensor },
  ): void {
    const gpu = this.gpu, c = this.config;
    const { B, T } = acts;
    const N = B * T, C = c.hidden_size, E = c.word_embed_proj_dim;
    const H = this.heads, Dh = this.headDim;
    const dh = gpu.zeros([N, E]);
    if (grads.dhidden) add(gpu, dh, grads.dhidden, dh);
    if (grads.dlogits) {
      checkShape(grads.dlogits.size === N * c.vocab_size, "OptModel.backward: dlogits shape");
      const chunks = this.#wteChunks();
      const gchunks = this.frozenBase ? [] : this.#wteChunks("grad");
      if (chunks.length === 1) {
        if (!this.frozenBase) {
          matmul(gpu, grads.dlogits, acts.hidden, {
            transA: true,
            out: gchunks[0].view,
            accumulate: true,
          });
        }
        matmul(gpu, grads.dlogits, chunks[0].view, { out: dh, accumulate: true });
      } else {
        // per vocabulary chunk, from dlogitsᵀ (V, N) whose row blocks are contiguous
        const V = c.vocab_size;
        const dlT = swapAxes12(gpu, grads.dlogits.reshape([1, N, V, 1])).intoShape([V, N]);
        chunks.forEach((ch, i) => {
          const part = this.#rowsCopy(dlT, ch.row0, ch.rows); // (rows, N)
          if (!this.frozenBase) {
            matmul(gpu, part, acts.hidden, { out: gchunks[i].view, accumulate: true });
          }
          matmul(gpu, part, ch.view, { transA: true, out: dh, accumulate: true });
          part.dispose();
        });
        dlT.dispose();
      }
    }
    if (grads.dvalues) {
      checkShape(grads.dvalues.size === N, "OptModel.backward: dvalues must have B·T elements");
      const dv = grads.dvalues.reshape([N, 1]);
      matmul(gpu, dv, acts.hidden, {
        transA: true,
        out: this.#g("v_head.weight"),
        accumulate: true,
      });
      matmul(gpu, dv, this.#p("v_head.weight"), { out: dh, accumulate: true });
    }
    // project_out, final layernorm
    let dx: Tensor = dh;
    if (E !== C) {
      dx = this.#linearBackward(dh, acts.preOut, `${D}project_out`, { bias: false });
      dh.dispose();
    }
    if (acts.lnf) {
      const d = this.#lnBackward(dx, acts.xL, acts.lnf, `${D}final_layer_norm`);
      dx.dispose();
      dx = d;
    }
    for (let l = c.num_hidden_layers - 1; l >= 0; l--) {
      const a = acts.layers[l], p = `${D}layers.${l}.`;
      const pre = c.do_layer_norm_before;
      // FFN half: x2 = x1 + fc2(relu(fc1(ffnIn)))  [post-LN: x2 = LN2(x1 + …)]
      let dRes: Tensor; // gradient at the FFN residual sum
      if (pre) dRes = dx;
      else {
        dRes = this.#lnBackward(dx, a.x2pre!, a.ln2!, `${p}final_layer_norm`);
        dx.dispose();
      }
      const lu = acts.loraU;
      const dH = this.#linearBackward(dRes, a.h, `${p}fc2`, { reluBackwardOf: a.h }, lu);
      let dx1: Tensor;
      if (pre) {
        const dln2 = this.#linearBackward(dH, a.ffnIn, `${p}fc1`, {}, lu);
        dx1 = dRes; // residual path, then the layernorm path added in place
        this.#lnBackward(dln2, a.x1, a.ln2!, `${p}final_layer_norm`, dx1);
        dln2.dispose();
      } else {
        dx1 = dRes;
        this.#linearBackward(dH, a.ffnIn, `${p}fc1`, { dxInto: dx1 }, lu);
      }
      dH.dispose();
      // attention half: x1 = x0 + out_proj(attn(attnIn))  [post-LN: x1 = LN1(x0 + …)]
      let dRes1: Tensor;
      if (pre) dRes1 = dx1;
      else {
        dRes1 = this.#lnBackward(dx1, a.x1pre!, a.ln1!, `${p}self_attn_layer_norm`);
        dx1.dispose();
      }
      // the input gradient in attention's head layout straight from the matmul's epilogue
      // (a head split), else merged and swapped
      const outProj = `${p}self_attn.out_proj`;
      const split = T > 1 && !this.#adapter(outProj);
      const dMerged = this.#linearBackward(dRes1, a.merged, outProj, {
        splitHeads: split ? { T, H, Dh } : undefined,
      }, lu);
      const dAtt = split
        ? dMerged.intoShape([B, H, T, Dh])
        : swapAxes12(gpu, dMerged.reshape([B, T, H, Dh]));
      if (!split) dMerged.dispose();
      const dIn = this.#qkvBackward(dAtt, a, p) ?? (() => {
        // gradients straight in the merged (N, C) layout the projections' backward reads
        const g = attentionBackward(gpu, dAtt, a.q, a.k, a.v, a.att, { merged: true });
        const [dq, dk, dv] = [g.dq, g.dk, g.dv].map((t) => t.intoShape([N, C]));
        const dIn = this.#linearBackward(dq, a.attnIn, `${p}self_attn.q_proj`, {}, lu);
        this.#linearBackward(dk, a.attnIn, `${p}self_attn.k_proj`, { dxInto: dIn }, lu);
        this.#linearBackward(dv, a.attnIn, `${p}self_attn.v_proj`, { dxInto: dIn }, lu);
        for (const t of [dq, dk, dv]) t.dispose();
        return dIn;
      })();
      dAtt.dispose();
      if (pre) {
        dx = dRes1;
        this.#lnBackward(dIn, a.x0, a.ln1!, `${p}self_attn_layer_norm`, dx);
        dIn.dispose();
      } else {
        dx = add(gpu, dRes1, dIn, dIn);
        dRes1.dispose();
      }
    }
    if (this.frozenBase) {
      dx.dispose();
      return;
    }
    // embeddings
    const flatTok = acts.tokens.reshape([N]), flatPos = acts.positions.reshape([N]);
    const dwpe = this.#g(`${D}embed_positions.weight`);
    if (E !== C) {
      scatterAddRows(gpu, flatPos, dx, dwpe);
      const dTok = this.#linearBackward(dx, acts.tokEmb!, `${D}project_in`, { bias: false });
      for (const g of this.#wteChunks("grad")) scatterAddRows(gpu, flatTok, dTok, g.view, -g.row0);
      dTok.dispose();
    } else {
      scatterAddRows(gpu, flatPos, dx, dwpe);
      for (const g of this.#wteChunks("grad")) scatterAddRows(gpu, flatTok, dx, g.view, -g.row0);
    }
    dx.dispose();
  }

  /** Frees a forward pass's activations (not the caller's tokens and mask, nor `keep`). */
  disposeActivations(acts: OptActivations, keep: Tensor[] = []): void {
    const seen = new Set<Tensor>([acts.tokens, acts.mask, ...keep]);
    const free = (t: Tensor | undefined) => {
      if (t && !seen.has(t)) {
        seen.add(t);
        t.dispose();
      }
    };
    free(acts.positions);
    free(acts.tokEmb);
    for (const a of acts.layers) {
      for (
        const t of [
          a.x0,
          a.ln1?.y,
          a.ln1?.mean,
          a.ln1?.rstd,
          a.q,
          a.k,
          a.v,
          a.qkv,
          a.att.out,
          a.att.lse,
          a.merged,
          a.x1pre,
          a.x1,
          a.ln2?.y,
          a.ln2?.mean,
          a.ln2?.rstd,
          a.h,
          a.x2pre,
        ]
      ) free(t); // (att.lse returns the key/value textures it holds to the pool)
    }
    for (const t of [acts.xL, acts.lnf?.y, acts.lnf?.mean, acts.lnf?.rstd, acts.hidden]) free(t);
    for (const t of acts.loraU.values()) free(t);
  }
}
