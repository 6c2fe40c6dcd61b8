/**
 * Static facts about a WGSL module's `@group(0)` buffer bindings: how each is declared, and
 * whether the shader can write it. The runtime uses the declarations to apply WebGPU's
 * per-dispatch aliasing rules on every backend; the tests use the write analysis to keep every
 * binding a shader only reads declared `read` (what lets a real GPU cache it, and what lets one
 * tensor be bound twice, e.g. `matmul(gpu, a, a)`).
 *
 * @module
 */

/** How a shader binds a buffer. */
export type BufferAccess = "read_write" | "read" | "uniform";

/** A `@group(0)` buffer binding: its access mode and variable name. */
export interface BufferBinding {
  access: BufferAccess;
  name: string;
}

/** Buffer bindings of `@group(0)` in a WGSL module: binding index → access and name. */
export function bufferBindings(code: string): Map<number, BufferBinding> {
  const out = new Map<number, BufferBinding>();
  const re =
    /@binding\((\d+)\)\s*var<\s*(storage|uniform)\s*(?:,\s*(read_write|read)\s*)?>\s*(\w+)/g;
  for (const m of stripComments(code).matchAll(re)) {
    const access: BufferAccess = m[2] === "uniform"
      ? "uniform"
      : m[3] === "read_write"
      ? "read_write"
      : "read";
    out.set(Number(m[1]), { access, name: m[4] });
  }
  return out;
}

/** Removes `// …` and `/* … *\/` comments (WGSL has no string literals to confuse this). */
function stripComments(code: string): string {
  return code.replace(/\/\*[\s\S]*?\*\//g, " ").replace(/\/\/[^\n]*/g, " ");
}

const ASSIGN = /^(?:=(?!=)|\+=|-=|\*=|\/=|%=|&=|\|=|\^=|<<=|>>=|\+\+|--)/;

/**
 * Whether the module can write the variable `name`: an assignment (`=`, compound, `++`/`--`) to
 * it or to an element or member of it, or its address taken (`&name…`, which atomics and pointer
 * arguments need — counted as a write, so the analysis never calls a written binding read-only).
 */
export function writesVariable(code: string, name: string): boolean {
  const src = stripComments(code);
  const re = new RegExp(`(?<![\\w.])${name}(?!\\w)`, "g");
  for (const m of src.matchAll(re)) {
    const start = m.index!;
    // Skip the declaration itself (`var<…> name`).
    if (/var<[^>]*>\s*$/.test(src.slice(Math.max(0, start - 60), start))) continue;
    if (/&\s*$/.test(src.slice(Math.max(0, start - 4), start))) {
      // `&name` — but not `a && name` or `a & name`, which are expressions.
      const before = src.slice(0, start).replace(/\s+$/, "");
      const prev = before.slice(0, -1).replace(/\s+$/, "").slice(-1);
      if (!/[\w)\]&]/.test(prev)) return true;
    }
    let i = start + name.length;
    for (;;) {
      while (/\s/.test(src[i] ?? "")) i++;
      if (src[i] === "[") {
        let depth = 0;
        for (; i < src.length; i++) {
          if (src[i] === "[") depth++;
          else if (src[i] === "]" && --depth === 0) break;
        }
        i++;
      } else if (src[i] === "." && /[A-Za-z_]/.test(src[i + 1] ?? "")) {
        i++;
        while (/\w/.test(src[i] ?? "")) i++;
      } else break;
    }
    if (ASSIGN.test(src.slice(i, i + 3))) return true;
  }
  return false;
}

/**
 * Storage bindings declared `read_write` that the module never writes (see
 * {@link writesVariable}): each should be declared `read`.
 */
export function unwrittenReadWriteBindings(code: string): BufferBinding[] {
  const out: BufferBinding[] = [];
  for (const b of bufferBindings(code).values()) {
    if (b.access === "read_write" && !writesVariable(code, b.name)) out.push(b);
  }
  return out;
}
