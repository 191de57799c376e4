r"""Synthetic representational collapse (Theorem 4.2 / appendix C.3, Figures 8 and 10).

One attention layer (no MLP), d=64, a random token stream x and a final token a:
A_n = [x_1..x_{n-1}, a] vs B_n = [x_1..x_{n-1}, a, a] (the last token copied). Per
precision: the distance of the last token's attention output sum_j alpha_nj v_j (the
quantity of Theorem B.3's proof) vs n, float64 as
ground truth, the n at which each precision becomes bitwise equal, and the onset predicted
from the float64 distance and the dtype's ulp at the attention output's magnitude.

  python -m experiments.synthetic_collapse                      # Fig 8: sinusoidal, N(0, 1/d)
  python -m experiments.synthetic_collapse --figure=10          # Fig 10: N(0, 1), every PE
  python -m experiments.synthetic_collapse --figure=10 --max_len=16384 --lengths=log:2:16384:300
"""
from absl import app, flags, logging

from collapse_jax import cli, figures, pairs, results, sweep, xla_env

F = flags.FLAGS
cli.define(dtype="float32,bfloat16,float16,float8_e4m3fn,float8_e5m2", d_model=64, vocab=1024,
           max_len=2048, lengths=None, seeds=["0"], out=None, plot=True)
flags.DEFINE_enum("figure", "8", ["8", "10"], "8: sinusoidal PE, weights N(0,1/d); "
                  "10: weights N(0,1), PEs rope/alibi/learned/sinusoidal/none")
flags.DEFINE_enum("copy", "vector", pairs.COPIES, "vector: B_n's copied last token keeps "
                  "position n-1, i.e. the whole input vector (PE included) is copied, as in "
                  "C.3; token: the copy takes position n (absolute PEs then never converge)")


def main(argv):
  del argv
  with cli.usage_errors():
    dtypes = [p.name for p in cli.policies(F.dtype)]
    seeds = cli.int_list(F.seeds, "seeds")
    # default: 120 log-spaced n from 2 (n = 1 is trivial when the vector is copied: [a] and
    # [a, a] attend to identical keys)
    lengths = cli.lengths(F.lengths or f"log:2:{F.max_len}:120", F.max_len)
  xla_env.enable_x64()
  out = cli.run_dir(F.out, "synthetic")
  pes, init_var = ((["sinusoidal"], 1.0 / F.d_model) if F.figure == "8" else
                   (["rope", "alibi", "learned", "sinusoidal", "none"], 1.0))
  by_pe, cfgs = {}, {}
  for pe in pes:
    cfgs[pe], by_pe[pe] = sweep.synthetic_collapse_grid(
        pe, init_var, lengths, seeds, dtypes, d_model=F.d_model, vocab=F.vocab, copy=F.copy,
        log=logging.info)
  results.write_json(f"{out}/results.json", results.header(
      "synthetic_collapse", cli.app_flags(), config=cfgs, figure=F.figure,
      runs=[r for rs in by_pe.values() for r in rs]))
  if F.plot:
    figures.sweep.synthetic_figure(
        by_pe, f"{out}/synthetic_collapse.png",
        f"Fig {F.figure}: 1 attention layer, d={F.d_model}, weights N(0, {init_var:.3g}), "
        f"last token copied ({F.copy}); float64 = ground truth")
  for pe, recs in by_pe.items():
    for r in recs:
      print(f"{pe:>10s} {r['dtype']:>14s} seed={r['seed']}: attention-output onset="
            f"{r['attn_onset']:>6d} predicted={r['predicted_onset']:>6d} sustained="
            f"{r['attn_sustained_onset']:>6d} linf[n={r['lengths'][-1]}]={r['attn_linf'][-1]:.3g}"
            f"  (residual y onset {r['collapse_onset']})")
  print(f"wrote {out}/results.json" + (", synthetic_collapse.png" if F.plot else ""))


if __name__ == "__main__":
  app.run(main)
