r"""The paper's copy and count tasks (Section 3, Appendix C.1; Figures 2-4, 6-7) on a local model.

  python -m experiments.tasks                       # SmolLM2: copy last/first, count ones, f32+bf16
  python -m experiments.tasks --task=sum,count_ones,count_bernoulli,count_word \
      --mode=direct,cot_no_shot,cot_few_shot --samples=5 --lengths=log:2:200:8
  python -m experiments.tasks --model=gemma3        # the base model, in plain text
  python -m experiments.tasks --full                # the paper's grid (hours on a CPU)

Greedy answers from THE decoder (collapse_jax.generate) under each precision, scored strict
(the answer template) and flexible (the last number), with the answer preference (margin:
log p(correct) - log p(best wrong number) at the template's answer slot) and, for count_ones
and copy_last, the bridge: pairs of prompts whose correct answers differ (count_ones n vs
n + 1 ones; copy_last 1^(n-1)0 vs 1^n), the sweep engine's last-token distance between them,
both answers and whether each is right; at a bitwise-equal pair at most one may be (checked:
'violated'). Words and prompt texts:
collapse_jax/tasks.py; the harness: collapse_jax/harness.py. Instruct models get their chat
template; base models (--model=gemma3) plain text: '<bos>{prompt}\n', the model continues.

Writes to --out: samples.jsonl (every raw sample), results.json (accuracy with Wilson 95%
intervals and margins per task, mode, dtype and n; the bridge; timings), tasks_accuracy.png,
tasks_counts.png (count tasks) and tasks_bridge.png.
"""
from __future__ import annotations

import os
import sys
import time

from absl import app, flags, logging

import collapse_jax  # noqa: F401  (applies the XLA guards before jax starts)
from collapse_jax import cli, figures, harness, jobs, results, tasks

F = flags.FLAGS
cli.define(dtype="float32,bfloat16", lengths="2,5,10,20", model="smollm2", out=None, plot=True,
           full=False)
flags.DEFINE_list("task", ["copy_last", "copy_first", "count_ones"],
                  f"tasks: {', '.join(tasks.TASKS)}")
flags.DEFINE_list("mode", ["direct"], f"prompt modes: {', '.join(tasks.MODES)} (CoT modes: "
                  "count tasks only)")
flags.DEFINE_integer("samples", 1, "seeded sequences per n (count_bernoulli, count_word; "
                     "the other tasks have one sequence per n)")
flags.DEFINE_integer("max_new_tokens", None, f"greedy tokens per answer (default "
                     f"{harness.DIRECT_TOKENS} direct, {harness.COT_TOKENS} CoT)")
flags.DEFINE_integer("batch", 8, "prompts decoded together")
FULL = dict(task=list(tasks.TASKS), mode=list(tasks.MODES), lengths="log:2:1000:12", samples=5)


def _setup():
  if F.full:
    for k, v in FULL.items():
      setattr(F, k, v)
  policies = cli.policies(F.dtype)
  names = [t.strip() for t in F.task]
  modes = [m.strip() for m in F.mode]
  for what, got, valid in (("task", names, tasks.TASKS), ("mode", modes, tasks.MODES)):
    bad = [x for x in got if x not in valid]
    if bad:
      raise ValueError(f"unknown --{what} {bad}; valid: {', '.join(valid)}")
  ns = cli.lengths(F.lengths, 100_000)
  if ns[0] < 2 and any(t.startswith("copy") for t in names):
    raise ValueError("the copy tasks need n >= 2 (a first and a last digit)")
  for name, v in (("samples", F.samples), ("batch", F.batch), ("max_new_tokens",
                                                                F.max_new_tokens or 1)):
    if v < 1:
      raise ValueError(f"--{name} must be >= 1, got {v}")
  return policies, names, modes, ns


def main(argv):
  del argv
  from collapse_jax import checkpoints
  with cli.usage_errors():
    policies, names, modes, ns = _setup()
  t0 = time.perf_counter()
  try:
    ckpt = checkpoints.load_model(F.model)
  except (OSError, ImportError, checkpoints.CheckpointError) as e:  # one line, no traceback
    sys.exit(f"error: {' '.join(str(e).split())}")
  out = cli.run_dir(F.out, "tasks")
  logging.info("tasks %s on %s, modes %s, n %s, dtypes %s -> %s", ",".join(names), ckpt.label,
               ",".join(modes), list(ns), ",".join(p.name for p in policies), out)
  progress = jobs.Progress(harness.cell_count(policies, names, modes))
  res = harness.evaluate(ckpt, policies, names, modes, ns, samples=F.samples,
                         max_new_tokens=F.max_new_tokens, batch=F.batch, log=logging.info,
                         on_cell=progress.end)
  caption = (f"{ckpt.label}; {'chat template' if ckpt.prompt_format == 'chat' else 'plain text'}"
             f"; greedy, max {F.max_new_tokens or 'default'} new tokens; n = sequence length "
             "(digits / ones / words); prompts from Appendix C.1 (collapse_jax/tasks.py)")
  results.write_jsonl(os.path.join(out, "samples.jsonl"), res["samples"])
  results.write_json(os.path.join(out, "results.json"), results.header(
      "tasks", cli.app_flags(), config=ckpt.config, policies=policies, model=ckpt.label,
      model_name=ckpt.name, prompt_format=ckpt.prompt_format, caption=caption, lengths=ns,
      stop_ids=harness.stop_ids(ckpt), summary=res["summary"], bridge=res["bridge"],
      timings_s=res["timings_s"], total_s=round(time.perf_counter() - t0, 1)), compact=True)
  files = ["samples.jsonl", "results.json"]
  if F.plot:
    figures.tasks.tasks_figure(res["summary"], os.path.join(out, "tasks_accuracy.png"), caption)
    files.append("tasks_accuracy.png")
    counts = [s for s in res["samples"] if s["task"] in tasks.COUNT_TASKS]
    if counts:
      figures.tasks.counts_figure(counts, os.path.join(out, "tasks_counts.png"), caption)
      files.append("tasks_counts.png")
    if res["bridge"]:
      figures.tasks.bridge_figure(res["bridge"], os.path.join(out, "tasks_bridge.png"), caption)
      files.append("tasks_bridge.png")
  for r in res["summary"]:
    print(f"{r['task']:>22s} {r['mode']:>12s} {r['dtype']:>9s} n={r['n']:<5d} acc strict "
          f"{r['strict']['accuracy']:.2f} flexible {r['flexible']['accuracy']:.2f} "
          f"[{r['flexible']['lo']:.2f}, {r['flexible']['hi']:.2f}] margin {r['margin']['mean']:+.3f}")
  for b in res["bridge"]:
    (sa, _), (sb, _) = b["pair"]
    print(f"bridge {b['task']:>10s} {b['dtype']:>9s} n={b['n']:<5d} {sa} vs {sb}: |y_a - y_b| "
          f"{b['y_linf']:.3g}{' (bitwise equal)' if b['y_equal'] else ''}; answers "
          f"{b['answer_a']} / {b['answer_b']} (correct {b['correct_a']} / {b['correct_b']}); "
          f"same output {b['output_equal']}, same margin {b['margin_equal']}"
          + ("; VIOLATED: equal y, both slot digits right" if b["violated"] else ""))
  print(f"total {time.perf_counter() - t0:.1f}s; wrote {out}/" + ", ".join(files))


if __name__ == "__main__":
  app.run(main)
