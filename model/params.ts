/**
 * Parameter memory: one buffer each for parameters, gradients and the two AdamW moments, with
 * a named, aligned view per parameter. Zeroing gradients is one `clearBuffer`; the global
 * gradient norm, clipping and AdamW run over whole ranges (decayed weights first, then
 * biases/norms), chunked only where a range exceeds the device's binding size.
 *
 * @module
 */

import { checkShape, NonFiniteValueError, ShapeError } from "../kernels/errors.ts";
import { adamwStep } from "../kernels/optimizer.ts";
import { randomNormal } from "../kernels/prng.ts";
import { globalNorm, scaleByScalarTensor } from "../kernels/reduce.ts";
import { fill } from "../kernels/elementwise.ts";
import { type Gpu, numel, Tensor } from "../kernels/runtime.ts";
import type { ParamSpec } from "./config.ts";
import { parseSafetensors, toFloat32, writeSafetensors } from "./safetensors.ts";

/** Where one parameter lives in the flat buffers. */
export interface ParamSlot {
  /** The parameter's spec. */
  spec: ParamSpec;
  /** Element offset (a multiple of the binding alignment). */
  offset: number;
  /** Number of elements. */
  size: number;
}

/** AdamW hyperparameters for {@link ParamStore.adamw}. */
export interface AdamWConfig {
  /** Learning rate of this step. */
  lr: number;
  /** First-moment decay (default 0.9). */
  beta1?: number;
  /** Second-moment decay (default 0.999). */
  beta2?: number;
  /** Denominator epsilon (default 1e-8). */
  eps?: number;
  /** Decoupled weight decay on parameters whose spec has `decay` (default 0). */
  weightDecay?: number;
  /**
   * Multiply the gradients by the clip coefficient of this {@link ParamStore.gradNorm} result
   * first: clipping inside the AdamW pass (the bits of `clipGradNorm` then `adamw`).
   */
  clip?: Tensor;
}

/**
 * Flat parameter, gradient and moment buffers with named views.
 *
 * @example
 * ```ts
 * import { Gpu, optParamSpecs, OPT_PRESETS, ParamStore } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const store = new ParamStore(gpu, optParamSpecs(OPT_PRESETS.tiny));
 * store.init(42);
 * const wq = store.param("model.decoder.layers.0.self_attn.q_proj.weight"); // (32, 32) view
 * ```
 */
export class ParamStore {
  /** Every parameter's slot (offset and size in the packed buffers), by HF name. */
  readonly slots: Map<string, ParamSlot> = new Map();
  /** Total elements including alignment padding. */
  readonly total: number;
  /** Elements of the decayed range `[0, decayEnd)`; the rest is not decayed. */
  readonly decayEnd: number;
  /** All parameters, packed in one buffer in spec order. */
  readonly params: Tensor;
  /** False for a frozen store: parameters only, no gradient or AdamW buffers. */
  readonly trainable: boolean;
  #release?: () => void;
  #grads?: Tensor;
  #m?: Tensor;
  #v?: Tensor;
  /** AdamW steps taken so far. */
  step = 0;
  #views = new Map<string, { p: Tensor; g?: Tensor }>();

  /**
   * Lays out `specs` in one buffer per role. With `frozen` only the parameters are allocated
   * (a frozen reward or reference model, or a LoRA base: a quarter of the memory); asking a
   * frozen store for gradients or an optimizer step is an error.
   */
  constructor(
    readonly gpu: Gpu,
    readonly specs: readonly ParamSpec[],
    opts: { frozen?: boolean } = {},
  ) {
    const align = Math.max(1, gpu.limits.minStorageBufferOffsetAlignment / 4);
    let offset = 0, decayEnd = 0, seenNoDecay = false;
    for (const spec of specs) {
      if (this.slots.has(spec.name)) throw new ShapeError(`duplicate parameter ${spec.name}`);
      if (spec.decay && seenNoDecay) {
        throw new ShapeError(`decayed parameter ${spec.name} after non-decayed ones`);
      }
      seenNoDecay ||= !spec.decay;
      const size = numel(spec.shape);
      this.slots.set(spec.name, { spec, offset, size });
      offset += Math.ceil(size / align) * align;
      if (spec.decay) decayEnd = offset;
    }
    this.total = Math.max(offset, align);
    this.decayEnd = decayEnd;
    const make = () => {
      const buf = gpu.pool.acquire(this.total * 4);
      return new Tensor(gpu, buf, [this.total], "f32");
    };
    this.params = make();
    this.trainable = !opts.frozen;
    // a frozen store's weights change only by loading (which drops the packed copies): the
    // texture matmul path packs them once (reference and reward models in every PPO iteration)
    if (opts.frozen) this.#release = gpu.holdConstant([this.params]);
    if (this.trainable) {
      this.#grads = make();
      this.#m = make();
      this.#v = make();
    }
    for (const t of this.#buffers()) gpu.clear(t);
  }

  #buffers(): Tensor[] {
    return [this.params, this.#grads, this.#m, this.#v].filter((t): t is Tensor => !!t);
  }

  #need(t: Tensor | undefined, what: string): Tensor {
    if (!t) throw new ShapeError(`frozen parameter store: no ${what} (created with frozen: true)`);
    return t;
  }

  /** All gradients in one tensor (error on a frozen store). */
  get grads(): Tensor {
    return this.#need(this.#grads, "gradients");
  }

  /** AdamW first moments (error on a frozen store). */
  get m(): Tensor {
    return this.#need(this.#m, "AdamW state");
  }

  /** AdamW second moments (error on a frozen store). */
  get v(): Tensor {
    return this.#need(this.#v, "AdamW state");
  }

  #slot(name: string): ParamSlot {
    const s = this.slots.get(name);
    if (!s) throw new ShapeError(`no parameter named ${name}`);
    return s;
  }

  #view(name: string): { p: Tensor; g?: Tensor } {
    let v = this.#views.get(name);
    if (!v) {
      const s = this.#slot(name);
      v = { p: this.params.view(s.offset, s.spec.shape) };
      this.#views.set(name, v);
    }
    return v;
  }

  /** The named parameter (a view; do not dispose). */
  param(name: string): Tensor {
    return this.#view(name).p;
  }

  /** The named parameter's gradient (a view; kernels accumulate into it). */
  grad(name: string): Tensor {
    const v = this.#view(name);
    if (!v.g) {
      const s = this.#slot(name);
      v.g = this.grads.view(s.offset, s.spec.shape);
    }
    return v.g;
  }

  /** True when the store has a parameter of that name. */
  has(name: string): boolean {
    return this.slots.has(name);
  }

  /**
   * Seeded initialisation: "normal" parameters N(0, std), biases 0, norm weights 1. Each
   * parameter draws from its own PRNG stream (its index), so adding one changes no other.
   */
  init(seed: number, std = 0.02): void {
    this.gpu.clear(this.params);
    this.specs.forEach((spec, i) => {
      // row chunks keep every binding within the device limit (e.g. a 50k-token embedding);
      // the PRNG index runs over the whole tensor, so chunking does not change the values
      for (const c of this.param(spec.name).rowChunks()) {
        const rowElems = c.rows === 0 ? 0 : c.view.size / c.rows;
        if (spec.init === "normal") {
          randomNormal(this.gpu, c.view.shape, {
            seed,
            stream: i,
            std: spec.std ?? std,
            indexOffset: c.row0 * rowElems,
          }, c.view);
        } else if (spec.init === "ones") fill(this.gpu, c.view, 1);
      }
    });
  }

  /**
   * Copies every parameter that `other` also has (same name and shape) from `other`, on the
   * GPU; returns the names copied. E.g. start a reward model (with `v_head`) from an SFT model.
   */
  copyFrom(other: ParamStore): string[] {
    const copied: string[] = [];
    for (const [name, s] of this.slots) {
      const o = other.slots.get(name);
      if (!o || o.spec.shape.join() !== s.spec.shape.join()) continue;
      this.gpu.copyRange(other.params, o.offset, this.params, s.offset, s.size);
      copied.push(name);
    }
    return copied;
  }

  /** Sets every gradient to zero (one clear). */
  zeroGrads(): void {
    this.gpu.clear(this.grads);
  }

  /** Uploads host values into a parameter. */
  set(name: string, data: Float32Array): void {
    const s = this.#slot(name);
    checkShape(
      data.length === s.size,
      `parameter ${name}: ${data.length} values for shape [${s.spec.shape}]`,
    );
    this.gpu.write(this.params, data, s.offset);
  }

  /** Reads every parameter (or gradient) back, by name. */
  async toHost(
    which: "params" | "grads" = "params",
    options: { finite?: boolean } = {},
  ): Promise<Map<string, Float32Array>> {
    const all = await this.gpu.readF32(which === "params" ? this.params : this.grads);
    if (options.finite) this.assertFinite(all);
    const out = new Map<string, Float32Array>();
    for (const [name, s] of this.slots) out.set(name, all.slice(s.offset, s.offset + s.size));
    return out;
  }

  /** Whole-range views no larger than the device's binding size. */
  #chunks(t: Tensor, start: number, end: number): Tensor[] {
    const align = Math.max(1, this.gpu.limits.minStorageBufferOffsetAlignment / 4);
    const max = Math.floor(this.gpu.maxBindingBytes / 4 / align) * align;
    const out: Tensor[] = [];
    for (let o = start; o < end; o += max) out.push(t.view(o, [Math.min(max, end - o)]));
    return out;
  }

  /**
   * Global L2 norm of all gradients as a GPU `[4]` tensor (norm, clip coefficient
   * `min(1, maxNorm / norm)` with `maxNorm`); the gradients are left as they are. Pass it to
   * {@link adamw} as `clip` to clip within the update. No readback.
   */
  gradNorm(maxNorm?: number): Tensor {
    return globalNorm(this.gpu, this.#chunks(this.grads, 0, this.total), maxNorm ?? 0);
  }

  /**
   * Global L2 norm of all gradients as a GPU `[4]` tensor (norm, clip coefficient); with
   * `maxNorm` the gradients are scaled in place by the coefficient. No readback.
   */
  clipGradNorm(maxNorm?: number): Tensor {
    const chunks = this.#chunks(this.grads, 0, this.total);
    const stats = globalNorm(this.gpu, chunks, maxNorm ?? 0);
    if (maxNorm !== undefined) {
      for (const c of chunks) {
        scaleByScalarTensor(this.gpu, c, stats, 1);
      }
    }
    return stats;
  }

  /**
   * One AdamW step over all parameters (weight decay only on the decayed range, which comes
   * first): one dispatch per bindable chunk.
   */
  adamw(o: AdamWConfig): void {
    this.step++;
    const ps = this.#chunks(this.params, 0, this.total),
      gs = this.#chunks(this.grads, 0, this.total);
    const ms = this.#chunks(this.m, 0, this.total), vs = this.#chunks(this.v, 0, this.total);
    let start = 0;
    ps.forEach((p, i) => {
      adamwStep(this.gpu, p, gs[i], ms[i], vs[i], {
        lr: o.lr,
        beta1: o.beta1,
        beta2: o.beta2,
        eps: o.eps,
        weightDecay: o.weightDecay ?? 0,
        weightDecayUntil: Math.max(0, Math.min(p.size, this.decayEnd - start)),
        step: this.step,
        gradScale: o.clip ? { tensor: o.clip, index: 1 } : undefined,
      });
      start += p.size;
    });
  }

  /**
   * The full training state — parameters and both AdamW moments per name, plus the step — as
   * safetensors bytes (`<name>`, `optimizer.m.<name>`, `optimizer.v.<name>`), for exact resume.
   */
  async saveState(metadata: Record<string, string> = {}): Promise<Uint8Array> {
    const [p, m, v] = await Promise.all(
      [this.params, this.m, this.v].map((t) => this.gpu.readF32(t)),
    );
    const checked = [["parameter", p], ["AdamW first moment", m], ["AdamW second moment", v]];
    for (const [what, a] of checked as [string, Float32Array][]) {
      this.assertFinite(a, what);
    }
    const tensors = [];
    for (const [name, s] of this.slots) {
      const at = (a: Float32Array) => a.slice(s.offset, s.offset + s.size);
      tensors.push({ name, shape: s.spec.shape, data: at(p) });
      tensors.push({ name: `optimizer.m.${name}`, shape: s.spec.shape, data: at(m) });
      tensors.push({ name: `optimizer.v.${name}`, shape: s.spec.shape, data: at(v) });
    }
    return writeSafetensors(tensors, { ...metadata, step: String(this.step) });
  }

  /**
   * Throws {@link NonFiniteValueError} naming the first slot of `all` (laid out like this store's
   * parameters) that holds a NaN or an infinity; checkpoint writers call it so that a
   * diverged model never replaces the last good checkpoint.
   */
  assertFinite(all: Float32Array, what = "parameter"): void {
    for (let i = 0; i < all.length; i++) {
      if (Number.isFinite(all[i])) continue;
      let at = `index ${i}`;
      for (const [name, s] of this.slots) {
        if (i >= s.offset && i < s.offset + s.size) at = `${name}[${i - s.offset}]`;
      }
      throw new NonFiniteValueError(
        `${what} ${at} is ${all[i]}: not checkpointed (the previous checkpoint stays)`,
      );
    }
  }

  /**
   * Restores {@link saveState} bytes (names and shapes must match this store; the step must be
   * a non-negative integer) and returns the file's metadata. Everything is checked before the
   * store is written, so a bad file leaves it as it was.
   */
  loadState(bytes: Uint8Array): Record<string, string> {
    const file = parseSafetensors(bytes);
    const get = (key: string, shape: number[]) => {
      const e = file.tensors.get(key);
      if (!e || e.shape.join() !== shape.join()) {
        throw new ShapeError(`training state lacks ${key} [${shape}]`);
      }
      return toFloat32(e, key);
    };
    const step = Number(file.metadata.step);
    if (!Number.isInteger(step) || step < 0) {
      throw new ShapeError("training state has no valid step");
    }
    const parts = [...this.slots].map(([name, s]) => ({
      s,
      p: get(name, s.spec.shape),
      m: get(`optimizer.m.${name}`, s.spec.shape),
      v: get(`optimizer.v.${name}`, s.spec.shape),
    }));
    for (const { s, p, m, v } of parts) {
      this.gpu.write(this.params, p, s.offset);
      this.gpu.write(this.m, m, s.offset);
      this.gpu.write(this.v, v, s.offset);
    }
    this.step = step;
    return file.metadata;
  }

  /** Frees the buffers. */
  dispose(): void {
    this.#release?.();
    for (const t of this.#buffers()) t.dispose();
  }
}
