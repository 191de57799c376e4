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
intervals and margins per task, mode, dtype and n, and pooled per octave of n, which gives
the tasks with one sequence per n their intervals on a dense --lengths grid; the bridge;
timings), tasks_accuracy.png, tasks_octaves.png (where an octave holds several n),
tasks_counts.png (count tasks), tasks_bridge.png and, with --beside (earlier runs' --out,
e.g. another model's), tasks_models.png (and tasks_models_octaves.png on dense grids): the
runs side by side, each in its prompt format. A job of cells (dtype x task x mode, and
dtype x bridge task; collapse_jax/jobs.py), as precision_sweep: --resume, signals, hosts.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time

from absl import app, flags, logging

# importing collapse_jax applies the XLA guards before jax starts
from collapse_jax import cli, figures, harness, hosts, jobs, prompts, results, tasks

F = flags.FLAGS
# The size presets (cli.sized): 'small' by default, 'full' with --full (the paper's grid); a
# flag given explicitly wins over either.
SIZES = {"small": dict(task=["copy_last", "copy_first", "count_ones"], mode=["direct"],
                       lengths="2,5,10,20", samples=1),
         "full": dict(task=list(tasks.TASKS), mode=list(tasks.MODES), lengths="log:2:1000:12",
                      samples=5)}


def define_flags(fv: flags.FlagValues) -> None:
  cli.define(fv, dtype="float32,bfloat16", lengths=None, model="smollm2", out=None, plot=True,
             full=False, **cli.JOB)
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
  flags.DEFINE_list("beside", [], "earlier tasks runs' --out directories (other models) drawn "
                    "beside this run in tasks_models.png", flag_values=fv)
  flags.DEFINE_boolean("bridge", True, "run the bridge cells of count_ones and copy_last (an "
                       "exact-length forward pair per n, compiled per length: costly on a "
                       "dense --lengths grid)", flag_values=fv)


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
  beside: list = dataclasses.field(default_factory=list)  # (label, results) per --beside run


def parse(fl: dict) -> Spec:
  """Flags (``cli.app_flags()`` or ``cli.parse_argv``) -> :class:`Spec`, --lengths (default
  2,5,10,20; --full log:2:1000:12), --task, --mode and --samples from :data:`SIZES`;
  ValueError (one line) on a bad value or an --out that holds files. Loads no model."""
  fl = {**fl, **cli.sized(fl, SIZES)}
  cli.check_model(fl["model"])
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
  jobs.check_job_flags(fl, cli.job_spec(fl))
  beside = [results.read_results(d, "tasks") for d in fl["beside"]]
  return Spec(policies, names, modes, ns, fl["samples"], fl, [
      (f"{r['model']} ({prompts.task_format_name(r['prompt_format'])})", r) for r in beside])


def main(argv):
  del argv  # the command line is sys.argv (for the resume line)
  with cli.usage_errors():
    spec = parse(cli.app_flags(__file__))
    fl = spec.flags
    procs = hosts.start_processes(fl["coordinator"], fl["num_processes"], fl["process_id"],
                                  fl["distributed"])
  t0 = time.perf_counter()
  ckpt = cli.load_model(fl["model"], logging.info)
  cells = harness.task_cells(spec.policies, spec.tasks, spec.modes, fl["bridge"])
  logging.info("tasks %s on %s, modes %s, n %s, dtypes %s: %d cells", ",".join(spec.tasks),
               ckpt.label, ",".join(spec.modes), [int(n) for n in spec.lengths],
               ",".join(p.name for p in spec.policies), len(cells))
  if (spec.samples or 1) > 1 and (fixed := [t for t in spec.tasks if t not in tasks.SEEDED]):
    logging.warning("--samples=%d applies to %s only; %s have one sequence per n",
                    spec.samples, ", ".join(tasks.SEEDED), ", ".join(fixed))
  if skipped := harness.skipped_cells(spec.tasks, spec.modes):
    logging.warning("skipping %s: CoT modes are for the count tasks", ", ".join(skipped))
  run_cells = functools.partial(harness.run_task_cells, ckpt, cells, ns=spec.lengths,
                                samples=spec.samples, max_new_tokens=fl["max_new_tokens"],
                                batch=fl["batch"], drop_compiled=True)
  with jobs.exit_on_failure():
    out = jobs.run_job(run_cells, functools.partial(_assemble, spec, ckpt, cells, t0),
                       out=fl["out"], prefix="tasks", experiment="tasks",
                       spec=cli.job_spec(fl), cell_ids=list(cells), procs=procs,
                       heartbeat_s=fl["heartbeat"], argv=sys.argv, module=__spec__.name)
  if procs.index != 0:
    print(f"process {procs.index}: cells saved; process 0 wrote the results in {out}")


def _assemble(spec: Spec, ckpt, cells, t0, out, shards):
  """Process 0: samples.jsonl, results.json and the figures from every cell's shard."""
  fl = spec.flags
  res = harness.assemble_tasks(cells, {i: s["record"] for i, s in shards.items()})
  fmt = prompts.task_format_name(ckpt.prompt_format)
  common = (f"greedy, max {fl['max_new_tokens'] or 'default'} new tokens; n = sequence length "
            "(digits / ones / words); prompts from Appendix C.1 (collapse_jax/tasks.py)")
  caption = f"{ckpt.label}; {fmt}; {common}"
  results.write_jsonl(os.path.join(out, "samples.jsonl"), res["samples"])
  total = time.perf_counter() - t0  # this process's wall time (a resumed run: since then)
  results.write_json(os.path.join(out, "results.json"), results.header(
      "tasks", fl, config=ckpt.config, policies=spec.policies, model=ckpt.label,
      model_name=ckpt.name, prompt_format=ckpt.prompt_format, caption=caption,
      lengths=spec.lengths, stop_ids=harness.stop_ids(ckpt), summary=res["summary"],
      octaves=res["octaves"], bridge=res["bridge"], cells=res["cells"],
      timings_s=res["timings_s"], total_s=round(total, 1)), compact=True)
  files = ["samples.jsonl", "results.json"] + (
      figures.tasks.write_all(res, out, caption, tasks.COUNT_TASKS,
                              [(f"{ckpt.label} ({fmt})", res)] + spec.beside, common)
      if fl["plot"] else [])
  print("\n".join([harness.summary_line(r) for r in res["summary"]]
                  + [harness.octave_line(r) for r in res["octaves"] if r["lengths"] > 1]
                  + [harness.bridge_line(b) for b in res["bridge"]]))
  print(f"total {total:.1f}s; wrote {out}/" + ", ".join(files))


if __name__ == "__main__":
  define_flags(F)
  app.run(main)
