import { goldScore, makeBuiltinTask, parseQuestion, toHhJsonl } from "../../trainer/task.ts";
import { readPairs } from "../../trainer/data.ts";
import { assert, assertEquals } from "../assert.ts";
import type { Case } from "../_util.ts";

export const cases: Case[] = [];

cases.push({
  name: "task: gold scores, determinism, label noise, hh-rlhf round trip and headroom",
  run() {
    const q = { answer: 12 };
    assertEquals(goldScore(q, " 12."), 1);
    assertEquals(goldScore(q, " It is 12."), 0.8);
    assertEquals(goldScore(q, " 12"), 0.8);
    assertEquals(goldScore(q, " 11."), 0.4);
    assertEquals(goldScore(q, " Maybe 13"), 0);
    assertEquals(goldScore(q, " 12, I am sure."), 0.8);
    assertEquals(goldScore({ answer: 0 }, " 0."), 1);
    const a = makeBuiltinTask(7), b = makeBuiltinTask(7), c = makeBuiltinTask(8);
    assertEquals(JSON.stringify(a), JSON.stringify(b), "same seed, same task");
    assert(JSON.stringify(a.sft) !== JSON.stringify(c.sft), "other seed differs");
    // label noise ≈ 10 % on training pairs, none on held-out pairs
    const wrongOrder = (ps: typeof a.pairs) =>
      ps.filter((p) => {
        const qq = parseQuestion(p.prompt)!;
        return goldScore(qq, p.chosen) < goldScore(qq, p.rejected);
      }).length / ps.length;
    const noise = wrongOrder(a.pairs);
    assert(noise > 0.07 && noise < 0.13, `training label noise ${noise}`);
    assertEquals(wrongOrder(a.heldOutPairs), 0, "held-out pairs are clean");
    // demonstrations leave headroom: mean gold well below the best reachable 1.0
    const mean = a.sft.reduce((s, e) => s + goldScore(parseQuestion(e.prompt)!, e.completion), 0) /
      a.sft.length;
    assert(mean > 0.65 && mean < 0.8, `SFT demonstrations mean gold ${mean}`);
    assertEquals(
      readPairs(toHhJsonl(a.pairs.slice(0, 20))),
      a.pairs.slice(0, 20).map((p) => ({ ...p, margin: undefined })),
    );
  },
});
