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

import dataclasses
import os
import sys
import time

from absl import app, flags, logging

# importing collapse_jax applies the XLA guards before jax starts
from collapse_jax import cli, figures, harness, jobs, results, tasks

F = flags.FLAGS
# The size presets (cli.sized): 'small' by default, 'full' with --full (the paper's grid); a
# flag given explicitly wins over either.
SIZES = {"small": dict(task=["copy_last", "copy_first", "count_ones"], mode=["direct"],
                       lengths="2,5,10,20", samples=1),
         "full": dict(task=list(tasks.TASKS), mode=list(tasks.MODES), lengths="log:2:1000:12",
                      samples=5)}


def define_flags(fv: flags.FlagValues) -> None:
  cli.define(fv, dtype="float32,bfloat16", lengths=None, model="smollm2", out=None, plot=True,
             full=False)
  flags.DEFINE_list("task", None, f"tasks: {', '.join(tasks.TASKS)} (default: "
                    "copy_last,copy_first,count_ones; --full: all)", flag_values=fv)
  flags.DEFINE_list("mode", None, f"prompt modes: {', '.join(tasks.MODES)} (CoT modes: count "
                    "tasks only; default: direct; --full: all)", flag_values=fv)
  flags.DEFINE_integer("samples", None, "seeded sequences per n (count_bernoulli, count_word; "
                       "the other tasks have one sequence per n; default 1, --full 5)",
                       flag_values=fv)
  flags.DEFINE_integer("max_new_tokens", None, f"greedy tokens per answer (default "
                       f"{harness.DIRECT_TOKENS} direct, {harness.COT_TOKENS} CoT)", flag_values=fv)
  flags.DEFINE_integer("batch", 8, "prompts decoded together", flag_values=fv)


@dataclasses.dataclass(frozen=True)
class Spec:
  """A run, parsed: ``lengths``: the n, shape [N]; ``flags``: the flags with the size
  presets resolved (what results.json records)."""
  policies: list
  tasks: list
  modes: list
  lengths: object
  samples: int
  flags: dict


def parse(fl: dict) -> Spec:
  """Flags (``cli.app_flags()`` or ``cli.parse_argv``) -> :class:`Spec`, --lengths (default
  2,5,10,20; --full log:2:1000:12), --task, --mode and --samples from :data:`SIZES`;
  ValueError (one line) on a bad value or an --out that holds files. Loads no model."""
  fl = {**fl, **cli.sized(fl, SIZES)}
  policies = cli.policies(fl["dtype"])
  names, modes = [t.strip() for t in fl["task"]], [m.strip() for m in fl["mode"]]
  for what, got, valid in (("task", names, tasks.TASKS), ("mode", modes, tasks.MODES)):
    if bad := [x for x in got if x not in valid]:
      raise ValueError(f"unknown --{what} {bad}; valid: {', '.join(valid)}")
  ns = cli.lengths(fl["lengths"], 100_000)
  if ns[0] < 2 and any(t.startswith("copy") for t in names):
    raise ValueError("the copy tasks need n >= 2 (a first and a last digit)")
  for name in ("samples", "batch", "max_new_tokens"):
    if fl[name] is not None and fl[name] < 1:
      raise ValueError(f"--{name} must be >= 1, got {fl[name]}")
  jobs.check_out(fl["out"], {}, False, 1)
  return Spec(policies, names, modes, ns, fl["samples"], fl)


def main(argv):
  del argv
  from collapse_jax import checkpoints
  with cli.usage_errors():
    spec = parse(cli.app_flags(__file__))
  fl, policies, names, modes, ns = spec.flags, spec.policies, spec.tasks, spec.modes, spec.lengths
  t0 = time.perf_counter()
  try:
    ckpt = checkpoints.load_model(fl["model"])
  except (OSError, ImportError, checkpoints.CheckpointError) as e:  # one line, no traceback
    sys.exit(f"error: {' '.join(str(e).split())}")
  out = cli.run_dir(fl["out"], "tasks")
  logging.info("tasks %s on %s, modes %s, n %s, dtypes %s -> %s", ",".join(names), ckpt.label,
               ",".join(modes), list(ns), ",".join(p.name for p in policies), out)
  progress = jobs.Progress(harness.cell_count(policies, names, modes))
  res = harness.evaluate(ckpt, policies, names, modes, ns, samples=spec.samples,
                         max_new_tokens=fl["max_new_tokens"], batch=fl["batch"], log=logging.info,
                         on_cell=progress.end)
  caption = (f"{ckpt.label}; {'chat template' if ckpt.prompt_format == 'chat' else 'plain text'}"
             f"; greedy, max {fl['max_new_tokens'] or 'default'} new tokens; n = sequence length "
             "(digits / ones / words); prompts from Appendix C.1 (collapse_jax/tasks.py)")
  results.write_jsonl(os.path.join(out, "samples.jsonl"), res["samples"])
  results.write_json(os.path.join(out, "results.json"), results.header(
      "tasks", fl, config=ckpt.config, policies=policies, model=ckpt.label,
      model_name=ckpt.name, prompt_format=ckpt.prompt_format, caption=caption, lengths=ns,
      stop_ids=harness.stop_ids(ckpt), summary=res["summary"], bridge=res["bridge"],
      timings_s=res["timings_s"], total_s=round(time.perf_counter() - t0, 1)), compact=True)
  files = ["samples.jsonl", "results.json"]
  if fl["plot"]:
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
  define_flags(F)
  app.run(main)
