r"""Figure 5 on real weights: representational collapse in SmolLM2-135M-Instruct or Gemma 3 270M.

For the paper's four prompt settings (collapse_jax/prompts.py: (a) count ones, (b) count
random digits ending in 1 vs 1 1, (c) copy ones, (d) copy ones with commas grouped from the
right, '1,111'; the variant d_left groups them from the left, '111,1') and each precision,
compare the compared-token representations of A_n and B_n (n vs n+1 digit tokens) for every
n in the grid, in THE decoder with the GGUF weights:

  python -m experiments.real_model_collapse                        # 4 settings x 3 dtypes, n<=1000
  python -m experiments.real_model_collapse --max_len=64 --dtype=float32,bfloat16   # smoke
  python -m experiments.real_model_collapse --model=gemma3 --max_len=2000       # Gemma 3 270M
  python -m experiments.real_model_collapse --model=gemma3 --windows=native,global,512
      # the sliding-window mitigation: the same pairs with the model's local/global layers,
      # every layer global, every layer a 512 window
  python -m experiments.real_model_collapse --engine=exact --lengths=1,10,100 --settings=a
      # exact-length forwards, cross-checked against the one-pass engine on the same n
  python -m experiments.real_model_collapse --settings=d,d_left --lengths=1:300:7
      # commas from the right (exact forwards) vs from the left (one causal pass)

Engines (collapse_jax/engines.py; default: causal for (a), (c), d_left, kv_cache for (b),
exact for (d): its commas are not prefix-consistent, but A_n is a prefix of A_{n+3}, so the exact
engine runs three forwards and reads every n from their rows). The default grid is every n in
1..--max_len; past 1024 n, kv_cache (which pays per n) runs (b) on a thinned grid, every n to
128 then 32 per octave, and again with every n of the octave where y is first bitwise equal
(collapse_jax/sweep.py, ``thinned``); --lengths runs exactly its n. --position=turn_end compares the chat
turn's last token (exact engine only). --seeds: setting (b)'s digit seeds. --model picks the
model (checkpoints.MODELS) and its prompt format (collapse_jax/prompts.py). Writes
results.json, real_model_collapse.png (Figure 5), real_model_collapse_layers.png and with
several --windows real_model_collapse_windows.png. A job of cells (window x setting x dtype
x seed; collapse_jax/jobs.py), as precision_sweep: --resume, signals, --num_processes.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time

from absl import app, flags, logging

# importing collapse_jax applies the XLA guards before jax starts
from collapse_jax import (attribution, cli, engines, figures, harness, hosts, jobs, prompts,
                          records, results, sweep, xla_env)

F = flags.FLAGS


def define_flags(fv: flags.FlagValues) -> None:
  cli.define(fv, dtype="float32,bfloat16,float16",  # fp8 opt-in: XLA:CPU compiles it in minutes
             max_len=1000, lengths=None, seeds=["0"], engine=None, chunk=32, fp8_scaling=False,
             out=None, plot=True, model="smollm2", windows=["native"], memory_budget=None,
             **cli.JOB)
  flags.DEFINE_list("settings", list(prompts.SETTINGS), "Figure 5 settings among "
                    f"{','.join(prompts.SETTINGS)}, or the variants {','.join(prompts.VARIANTS)}",
                    flag_values=fv)
  flags.DEFINE_enum("position", "digit", prompts.POSITIONS, "compared token: the last digit "
                    "(default) or the end of the chat turn (exact engine only)", flag_values=fv)
  flags.DEFINE_list("attribution", [], "kinds (drop,only,groups): run one --dtype's variants "
                    "(collapse_jax/attribution.py); draws attribution_<setting>.png", flag_values=fv)
  flags.DEFINE_bool("cross_check", True, "with --engine=exact and --position=digit, also run "
                    "the default engine on the same n and record the comparison", flag_values=fv)


@dataclasses.dataclass(frozen=True)
class Spec:
  """A run, parsed: ``settings``: prompt setting keys; ``grid``: the n, shape [N];
  ``budget``: bytes or None; ``cross_check``: also run the default engine (exact, digit)."""
  policies: list
  seeds: list
  settings: list
  grid: object
  windows: list
  budget: float | None
  cross_check: bool
  flags: dict


def parse(fl: dict) -> Spec:
  """Flags (``cli.app_flags()`` or ``cli.parse_argv``) -> :class:`Spec`; ValueError (one
  line) on a bad value or an --out that holds files. Loads no model, reads no absl global."""
  cli.check_model(fl["model"])
  policies = cli.policies(fl["dtype"], fp8_scaling=fl["fp8_scaling"])
  seeds = cli.int_list(fl["seeds"], "seeds")
  keys, valid = [k.strip() for k in fl["settings"]], prompts.SETTINGS + prompts.VARIANTS
  if bad := [k for k in keys if k not in valid]:
    raise ValueError(f"unknown settings {bad}; valid: {', '.join(valid)}")
  if fl["engine"] not in (None, "auto", *engines.ENGINES):
    raise ValueError(f"unknown engine {fl['engine']!r}; valid: auto, {', '.join(engines.ENGINES)}")
  if fl["position"] == "turn_end" and fl["engine"] not in (None, "auto", "exact"):
    raise ValueError("--position=turn_end needs the exact engine (A_n and B_n then differ "
                     "before the compared token, so no one-pass formulation applies)")
  if fl["chunk"] < 1:
    raise ValueError(f"--chunk must be >= 1, got {fl['chunk']}")
  budget = fl["memory_budget"]
  if budget is not None and budget <= 0:
    raise ValueError(f"--memory_budget must be > 0 GiB, got {budget}")
  grid, windows = cli.lengths(fl["lengths"], fl["max_len"]), cli.window_modes(fl["windows"])
  jobs.check_job_flags(fl, cli.job_spec(fl))
  if fl["attribution"]:
    attribution.variants(cli.one(policies, "dtype"), fl["attribution"], [])  # checks the kinds
  cross = fl["engine"] == "exact" and fl["cross_check"] and fl["position"] == "digit"
  return Spec(policies, seeds, keys, grid, windows, None if budget is None else budget * 2 ** 30,
              cross, dict(fl))


def main(argv):
  del argv  # the command line is sys.argv (for the resume line)
  with cli.usage_errors():
    spec = parse(cli.app_flags(__file__))
    fl = spec.flags
    procs = hosts.start_processes(fl["coordinator"], fl["num_processes"], fl["process_id"],
                                  fl["distributed"])
  if any(p.needs_x64 for p in spec.policies) or "groups" in fl["attribution"]:
    xla_env.enable_x64()  # (the groups' float64 RoPE-angle variant)
  t_start = time.perf_counter()
  ckpt = cli.load_model(fl["model"], logging.info)
  if fl["attribution"]:  # the variants of the one preset, for the points this model uses
    spec = dataclasses.replace(spec, policies=attribution.variants(
        spec.policies[0], fl["attribution"], attribution.model_points(ckpt.config)))
  with cli.usage_errors():
    groups = sweep.setting_groups(spec.settings, ckpt, spec.grid, spec.seeds, fl["position"],
                                  fl["engine"])
    cfgs = {w: ckpt.config.with_windows(w) for w in spec.windows}
  job = harness.figure5_job(ckpt.params, groups, cfgs, spec.policies, spec.cross_check)
  run_cells = functools.partial(
      harness.figure5_run_cells, job, grid=spec.grid, position=fl["position"],
      engine=fl["engine"], chunk=fl["chunk"], memory_budget=spec.budget,
      thin=fl["lengths"] is None, drop_compiled=True, log=logging.info)
  settings = {k: v[0] for sets, _ in groups for k, v in sets.items()}
  with jobs.exit_on_failure():
    out = jobs.run_job(run_cells, functools.partial(_assemble, spec, ckpt, cfgs, job, settings,
                                                    t_start, procs),
                       out=fl["out"], prefix="real", experiment="real_model_collapse",
                       spec=cli.job_spec(fl), cell_ids=job.ids, procs=procs,
                       heartbeat_s=fl["heartbeat"], argv=sys.argv, module=__spec__.name)
  if procs.index != 0:
    print(f"process {procs.index}: cells saved; process 0 wrote the results in {out}")


def _assemble(spec: Spec, ckpt, cfgs, job, settings, t_start, procs, out, shards):
  """Process 0: results.json and the figures from every cell's shard."""
  fl, windows = spec.flags, spec.windows
  runs, checks = harness.figure5_assemble(job, {i: s["record"] for i, s in shards.items()})
  caption = prompts.figure5_caption(ckpt.label, ckpt.prompt_format, fl["position"], runs,
                                    spec.seeds, spec.settings, windows)
  total = time.perf_counter() - t_start  # this process's wall time (a resumed run: since then)
  results.write_json(os.path.join(out, "results.json"), results.header(
      "real_model_collapse", fl, config=ckpt.config, policies=spec.policies,
      **harness.figure5_extras(ckpt, cfgs, settings, spec.grid, runs, caption),
      total_s=round(total, 1), layout=hosts.layout(procs), runs=runs, cross_check=checks),
      compact=True)
  sizes = sorted({w for c in cfgs.values() for w in c.layer_windows if w is not None})
  files = ["results.json"] + (attribution.write_groups(
      attribution.by_run(runs, spec.policies[0].storage_dtype), out, int(spec.grid[-1]),
      ckpt.label, fl["plot"]) if fl["attribution"] else figures.real.write_all(
          runs, settings, windows, sizes, out, caption) if fl["plot"] else [])
  print("\n".join([records.compact_line(r) for r in runs]
                  + [records.cross_check_line(c) for c in checks]))
  print(f"total {total:.1f}s; wrote {out}/" + ", ".join(files))


if __name__ == "__main__":
  define_flags(F)
  app.run(main)
