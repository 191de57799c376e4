r"""Synthetic representational collapse (Theorem 4.2 / appendix C.3, Figures 8 and 10).

One attention layer (no MLP), d=64, a random token stream x and a final token a:
A_n = [x_1..x_{n-1}, a] vs B_n = [x_1..x_{n-1}, a, a] (the last token copied). Per
precision: the distance of the last token's attention output sum_j alpha_nj v_j (the
quantity of Theorem B.3's proof) vs n, float64 as
ground truth, the n at which each precision becomes bitwise equal, and the onset predicted
from the float64 distance and the dtype's ulp at the attention output's magnitude.

  python -m experiments.synthetic_collapse                      # Fig 8: sinusoidal, N(0, 1/d)
  python -m experiments.synthetic_collapse --figure=10          # Fig 10: N(0, 1), every PE
  python -m experiments.synthetic_collapse --figure=10 --max_len=16384 --points=300
"""
import numpy as np
from absl import app, flags, logging

from collapse_jax import families, plotting, results, sweep, xla_env

F = flags.FLAGS
flags.DEFINE_enum("figure", "8", ["8", "10"], "8: sinusoidal PE, weights N(0,1/d); "
                  "10: weights N(0,1), PEs rope/alibi/learned/sinusoidal/none")
flags.DEFINE_list("dtypes", ["float32", "bfloat16", "float16", "float8_e4m3fn", "float8_e5m2"],
                  "precisions compared with the float64 ground truth")
flags.DEFINE_integer("d_model", 64, "model width")
flags.DEFINE_integer("vocab", 1024, "number of random token vectors")
flags.DEFINE_integer("max_len", 2048, "largest n")
flags.DEFINE_integer("points", 120, "log-spaced lengths in [1, max_len]")
flags.DEFINE_list("seeds", ["0"], "seeds (model init and token stream)")
flags.DEFINE_enum("copy", "vector", ["vector", "token"], "vector: B_n's copied last token "
                  "keeps position n-1, i.e. the whole input vector (PE included) is copied, as "
                  "in C.3; token: the copy takes position n (absolute PEs then never converge)")
flags.DEFINE_string("out", None, "output directory (default runs/synthetic-<time>)")


def plot(by_pe, path, title):
  pes = list(by_pe)
  fig, axes = plotting.subplots(2, len(pes), figsize=(4.6 * len(pes), 8.0))
  for j, pe in enumerate(pes):
    ax, axp = axes[0, j], axes[1, j]
    recs = by_pe[pe]
    floor = plotting.positive_for_log(np.concatenate([np.asarray(r["attn_linf"]) for r in recs]))[1]
    for dtype in dict.fromkeys(r["dtype"] for r in recs):
      rs = [r for r in recs if r["dtype"] == dtype]
      n = np.asarray(rs[0]["lengths"])
      y = np.mean([np.asarray(r["attn_linf"], np.float64) for r in rs], 0)
      c = plotting.DTYPE_COLORS.get(dtype)
      ax.plot(n, np.where(y > 0, y, np.nan), color=c, lw=1.4 if dtype == "float64" else 0.9,
              label=dtype)
      eq = np.all([np.asarray(r["attn_equal"], bool) for r in rs], 0)
      if eq.any():
        ax.plot(n[eq], np.full(eq.sum(), floor), "|", color=c, ms=8)
      if dtype != "float64":
        meas = [r["attn_onset"] for r in rs]
        pred = [r["predicted_onset"] for r in rs]
        axp.scatter(pred, meas, color=c, label=dtype, s=30)
    ax.set(xscale="log", yscale="log", xlabel="n", title=f"PE: {pe}")
    ax.axhline(floor, color="0.6", ls="--", lw=0.6)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7)
    lim = max(2, int(max(max(r["lengths"]) for r in recs)))
    axp.plot([1, lim], [1, lim], color="0.5", ls=":", lw=0.8, label="measured = predicted")
    axp.set(xlabel="predicted onset n (-1: never)", ylabel="measured collapse onset n (-1: never)",
            xscale="symlog", yscale="symlog", title=f"{pe}: predicted vs measured")
    axp.legend(fontsize=7)
  axes[0, 0].set_ylabel(r"$\|\sum_j\alpha_{nj}v_j - \sum_j\alpha^*_{n+1,j}v_j\|_\infty$ (ticks: bitwise equal)")
  fig.suptitle(title, fontsize=10)
  plotting.save(fig, path)


def main(argv):
  del argv
  xla_env.enable_x64()
  out = results.make_run_dir(F.out, "synthetic")
  # n = 1 is trivial when the vector is copied: [a] and [a, a] attend to identical keys.
  lengths = families.parse_lengths(f"log:2:{F.max_len}:{F.points}")
  seeds = [int(s) for s in F.seeds]
  pes, init_var = ((["sinusoidal"], 1.0 / F.d_model) if F.figure == "8" else
                   (["rope", "alibi", "learned", "sinusoidal", "none"], 1.0))
  by_pe, cfgs = {}, {}
  for pe in pes:
    cfgs[pe], by_pe[pe] = sweep.synthetic_collapse_grid(
        pe, init_var, lengths, seeds, F.dtypes, d_model=F.d_model, vocab=F.vocab,
        copy_vector=F.copy == "vector", log=logging.info)
  results.write_json(f"{out}/results.json", {
      "experiment": "synthetic_collapse", "figure": F.figure,
      "configs": {pe: c.to_dict() for pe, c in cfgs.items()}, "flags": F.flag_values_dict(),
      "environment": results.environment(), "runs": [r for rs in by_pe.values() for r in rs]})
  plot(by_pe, f"{out}/synthetic_collapse.png",
       f"Fig {F.figure}: 1 attention layer, d={F.d_model}, weights N(0, {init_var:.3g}), "
       f"last token copied ({F.copy}); float64 = ground truth")
  for pe, recs in by_pe.items():
    for r in recs:
      print(f"{pe:>10s} {r['dtype']:>14s} seed={r['seed']}: attention-output onset="
            f"{r['attn_onset']:>6d} predicted={r['predicted_onset']:>6d} sustained="
            f"{r['attn_sustained_onset']:>6d} linf[n={r['lengths'][-1]}]={r['attn_linf'][-1]:.3g}"
            f"  (residual y onset {r['collapse_onset']})")
  print(f"wrote {out}/results.json, synthetic_collapse.png")


if __name__ == "__main__":
  app.run(main)
