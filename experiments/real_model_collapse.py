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
exact for (d): its right-grouped commas are not prefix-consistent).
--position=turn_end compares the last token of the chat turn (exact engine only). --seeds are
setting (b)'s digit seeds. --model picks the model (collapse_jax.checkpoints.MODELS) and with it
the prompt format (chat template for SmolLM2-Instruct, plain text for the Gemma 3 base model;
collapse_jax/prompts.py). Writes results.json, real_model_collapse.png (Figure 5: last-layer
per-head distance and y) and real_model_collapse_layers.png (every layer), for the first
--windows mode, and with several modes real_model_collapse_windows.png.
"""
from __future__ import annotations

import os
import sys
import time

from absl import app, flags, logging

import collapse_jax  # noqa: F401  (applies the XLA guards before jax starts)
from collapse_jax import cli, figures, jobs, prompts, records, results, sweep, xla_env

F = flags.FLAGS
# fp8 is opt-in (--dtype=all or naming it): XLA:CPU compiles the 30-layer fp8 programs in
# minutes each (codegen time grows faster than linearly with depth; BUILD_NOTES.md).
cli.define(dtype="float32,bfloat16,float16", max_len=1000, lengths=None, seeds=["0"],
           engine=None, chunk=32, fp8_scaling=False, out=None, plot=True, model="smollm2",
           windows=["native"], memory_budget=None)
flags.DEFINE_list("settings", list(prompts.SETTINGS), "Figure 5 settings among "
                  f"{','.join(prompts.SETTINGS)}, or the variants {','.join(prompts.VARIANTS)}")
flags.DEFINE_enum("position", "digit", prompts.POSITIONS, "compared token: the last digit "
                  "(default) or the end of the chat turn (exact engine only)")
flags.DEFINE_bool("cross_check", True, "with --engine=exact and --position=digit, also run the "
                  "default engine on the same n and record the comparison")


def _setup():
  policies = cli.policies(F.dtype, fp8_scaling=F.fp8_scaling)
  seeds = cli.int_list(F.seeds, "seeds")
  keys = [k.strip() for k in F.settings]
  valid = prompts.SETTINGS + prompts.VARIANTS
  bad = [k for k in keys if k not in valid]
  if bad:
    raise ValueError(f"unknown settings {bad}; valid: {', '.join(valid)}")
  if F.position == "turn_end" and F.engine not in (None, "auto", "exact"):
    raise ValueError("--position=turn_end needs the exact engine (A_n and B_n then differ "
                     "before the compared token, so no one-pass formulation applies)")
  if F.chunk < 1:
    raise ValueError(f"--chunk must be >= 1, got {F.chunk}")
  if F.memory_budget is not None and F.memory_budget <= 0:
    raise ValueError(f"--memory_budget must be > 0 GiB, got {F.memory_budget}")
  return policies, seeds, keys, cli.lengths(F.lengths, F.max_len), cli.window_modes(F.windows)


def main(argv):
  del argv
  from collapse_jax import checkpoints
  with cli.usage_errors():
    policies, seeds, keys, grid, windows = _setup()
  if any(p.needs_x64 for p in policies):
    xla_env.enable_x64()
  t_start = time.perf_counter()
  try:
    ckpt = checkpoints.load_model(F.model)
  except (OSError, ImportError, checkpoints.CheckpointError) as e:  # one line, no traceback
    sys.exit(f"error: {' '.join(str(e).split())}")
  logging.info("loaded %s in %.1fs", ckpt.label, time.perf_counter() - t_start)
  with cli.usage_errors():
    groups = sweep.setting_groups(keys, ckpt, grid, seeds, F.position, F.engine)
    cfgs = {w: ckpt.config.with_windows(w) for w in windows}
  out = cli.run_dir(F.out, "real")
  logging.info("real-model collapse of %s -> %s (settings %s, %d n in [%d, %d], dtypes %s, "
               "windows %s)", ckpt.label, out, ",".join(keys), grid.size, grid[0], grid[-1],
               ",".join(p.name for p in policies), ",".join(windows))
  budget = None if F.memory_budget is None else F.memory_budget * 2 ** 30
  runs, checks = [], []
  grids = [([sweep.Model(cfg, [ckpt.params] * len(group_seeds),
                         {} if windows == ["native"] else {"window": w})
             for w, cfg in cfgs.items()], sets, group_seeds) for sets, group_seeds in groups]
  progress = jobs.Progress(sum(len(sweep.grid_cells(m, policies, sets, s)) for m, sets, s in grids))
  for models, sets, group_seeds in grids:
    recs = sweep.run_grid(models, policies, sets, grid, group_seeds, engine=F.engine,
                          chunk=F.chunk, memory_budget=budget, log=logging.info,
                          on_cell=lambda cell, rec: progress.end(cell.id, rec["seconds"]))
    runs += [records.compact({"window": windows[0], **r, "position": F.position}) for r in recs]
    if F.engine == "exact" and F.cross_check and F.position == "digit":
      one = [records.compact({"window": windows[0], **r}) for r in sweep.run_grid(
          models, policies, sets, grid, group_seeds, chunk=F.chunk, memory_budget=budget,
          log=logging.info)]
      for e, o in zip(runs[-len(one):], one):
        checks.append({"pairs": e["pairs"], "dtype": e["dtype"], "seed": e["seed"],
                       "window": e["window"], **records.cross_check(e, o)})
  settings = {k: v[0] for sets, _ in groups for k, v in sets.items()}
  caption = prompts.figure5_caption(ckpt.label, ckpt.prompt_format, F.position, runs, seeds,
                                    keys, windows)
  total = time.perf_counter() - t_start
  results.write_json(os.path.join(out, "results.json"), results.header(
      "real_model_collapse", cli.app_flags(), config=ckpt.config, policies=policies,
      model=ckpt.label, model_name=ckpt.name, prompt_format=ckpt.prompt_format,
      window_configs={w: {"layer_windows": c.layer_windows, "sliding_window": c.sliding_window}
                      for w, c in cfgs.items()},
      caption=caption, lengths=grid, settings={k: s.describe() for k, s in settings.items()},
      token_counts={k: s.token_counts(grid) for k, s in settings.items()},
      engines={r["pairs"]: r["engine"] for r in runs},
      timings_s={f"{r['window']}/{r['pairs']}/{r['dtype']}/{r['seed']}": r["seconds"]
                 for r in runs},
      total_s=round(total, 1), runs=runs, cross_check=checks), compact=True)
  files = ["results.json"]
  if F.plot:
    first = [r for r in runs if r["window"] == windows[0]]
    figures.real.figure5(first, settings, os.path.join(out, "real_model_collapse.png"), caption)
    figures.real.layers_figure(first, settings, os.path.join(out, "real_model_collapse_layers.png"),
                               caption)
    files += ["real_model_collapse.png", "real_model_collapse_layers.png"]
    if len(windows) > 1:
      sizes = sorted({w for c in cfgs.values() for w in c.layer_windows if w is not None})
      figures.real.windows_figure(runs, settings, windows, sizes,
                                  os.path.join(out, "real_model_collapse_windows.png"), caption)
      files.append("real_model_collapse_windows.png")
  for line in [records.compact_line(r) for r in runs] + [records.cross_check_line(c)
                                                          for c in checks]:
    print(line)
  print(f"total {total:.1f}s; wrote {out}/" + ", ".join(files))


if __name__ == "__main__":
  app.run(main)
