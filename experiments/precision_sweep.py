r"""Precision sweep: when do the last-token representations of A_n and B_n (n vs n+1
tokens, differing only by a repeated final token) become bitwise equal?

  python -m experiments.precision_sweep --dtype=bfloat16
  python -m experiments.precision_sweep --dtype=all --heads=1,4,16 --max_len=4096 \
      --lengths=log:1:4096:200 --family=stream_repeat_last --seeds=0,1,2

Writes results.json, results.csv and collapse.png to --out (default runs/sweep-<time>).
"""
from absl import app, flags, logging

import collapse_jax as cj
from collapse_jax import config as config_lib, families, plotting, precision, results, sweep, xla_env

F = flags.FLAGS
flags.DEFINE_string("dtype", "bfloat16", "precision preset, a comma list, or 'all' "
                    f"({', '.join(precision.preset_names())})")
flags.DEFINE_list("heads", ["1", "4", "16"], "comma list of head counts (each must divide d_model)")
flags.DEFINE_integer("layers", 2, "decoder layers")
flags.DEFINE_integer("d_model", 64, "model width")
flags.DEFINE_enum("pe", "rope", config_lib.PE_KINDS, "positional encoding")
flags.DEFINE_enum("norm", "layernorm", config_lib.NORM_KINDS, "normalisation")
flags.DEFINE_enum("mlp", "gelu", config_lib.MLP_KINDS, "MLP kind")
flags.DEFINE_integer("vocab", 32, "vocabulary size of the synthetic token model")
flags.DEFINE_enum("family", "prefix_repeat", families.FAMILIES, "sequence family")
flags.DEFINE_integer("prefix_len", 16, "random prefix length (prefix_repeat)")
flags.DEFINE_list("prefix_ids", None, "explicit prefix token ids (prefix_repeat)")
flags.DEFINE_integer("token", 1, "the repeated token a")
flags.DEFINE_integer("max_len", 2048, "largest n swept")
flags.DEFINE_string("lengths", None, "grid: 'a:b', 'a:b:step', 'log:a:b:count' or '1,2,8' "
                    "(default: every valid n up to --max_len)")
flags.DEFINE_list("seeds", ["0"], "seeds (model init and random tokens), run in one program")
flags.DEFINE_enum("engine", None, sweep.ENGINES, "default: causal for prefix families, "
                  "kv_cache for stream_repeat_last; masked is the reference")
flags.DEFINE_bool("fp8_scaling", False, "per-tensor amax scaling for fp8 presets")
flags.DEFINE_integer("chunk", 32, "lengths per vmapped chunk (kv_cache/masked engines)")
flags.DEFINE_string("out", None, "output directory (default runs/sweep-<UTC time>; never overwritten)")
flags.DEFINE_bool("plot", True, "write collapse.png")


def _setup():
  """Flags -> (policies, heads, config, length grid); raises ValueError on bad flags."""
  names = precision.preset_names() if F.dtype == "all" else F.dtype.split(",")
  pols = [precision.get_policy(n) for n in names]
  if F.fp8_scaling and not any(p.is_fp8 for p in pols):
    raise ValueError("--fp8_scaling applies to fp8 presets only; none selected")
  policies = [precision.get_policy(p.name, fp8_scaling=F.fp8_scaling) if p.is_fp8 else p
              for p in pols]
  heads = [int(h) for h in F.heads]
  cfg = cj.DecoderConfig(num_layers=F.layers, d_model=F.d_model, num_heads=heads[0], pe=F.pe,
                         norm=F.norm, mlp=F.mlp, vocab_size=F.vocab, max_len=F.max_len + 1)
  for h in heads:
    cfg.replace(num_heads=h)  # validates: heads must divide d_model
  grid = families.parse_lengths(F.lengths or f"1:{F.max_len}")
  if grid[-1] > F.max_len:
    raise ValueError(
        f"--lengths reaches n={grid[-1]}, beyond --max_len={F.max_len}" +
        (" (it exceeds the learned PE table, which holds max_len+1 positions)"
         if F.pe == "learned" else ""))
  if F.family == "prefix_repeat":
    start = (len(F.prefix_ids) if F.prefix_ids else F.prefix_len) + 1
    dropped = grid[grid < start]
    grid = grid[grid >= start]
    if grid.size == 0:
      raise ValueError(f"no swept n >= {start} (prefix_repeat needs n > prefix length)")
    if dropped.size:
      logging.warning("prefix_repeat: dropped n < %d from the grid (n must exceed the prefix)", start)
  return policies, heads, cfg, grid


def main(argv):
  del argv
  try:
    policies, heads, cfg, grid = _setup()
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  if any(p.needs_x64 for p in policies):
    xla_env.enable_x64()
  out = results.make_run_dir(F.out, "sweep")
  logging.info("precision sweep -> %s", out)
  print(f"numerics: {xla_env.numerics_path()['name']}")
  records = sweep.run_grid(cfg, policies, heads, F.family, grid, [int(s) for s in F.seeds],
                           engine=F.engine, token=F.token, prefix_len=F.prefix_len,
                           prefix_ids=[int(i) for i in F.prefix_ids] if F.prefix_ids else None,
                           chunk=F.chunk, log=logging.info)
  results.write_json(f"{out}/results.json", {
      "experiment": "precision_sweep", "config": cfg.to_dict(), "family": F.family,
      "flags": F.flag_values_dict(), "policies": {p.name: p.describe() for p in policies},
      "environment": results.environment(), "runs": records})
  rows = [row for r in records for row in sweep.csv_rows(r)]
  results.write_csv(f"{out}/results.csv", rows, list(sweep.CSV_COLUMNS) + [
      f"layer{l}_linf" for l in range(F.layers + 1)])
  if F.plot:
    plotting.collapse_plot(records, f"{out}/collapse.png",
                           f"{F.family}, {F.layers}L d={F.d_model} {F.pe}, engine "
                           f"{records[0]['engine']}: final output y, seed mean")
  for r in records:
    print(f"{r['dtype']:>16s} H={r['heads']:<3d} seed={r['seed']}: collapse onset n="
          f"{r['collapse_onset']}, sustained from n={r['sustained_onset']}, "
          f"min linf={min(r['linf']):.3g}, nonfinite={r['nonfinite_total']}")
  print(f"wrote {out}/results.json, results.csv" + (", collapse.png" if F.plot else ""))


if __name__ == "__main__":
  app.run(main)
