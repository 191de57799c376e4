"""Counting (section 6, appendix B.3): Proposition 6.1/B.9 and Corollary 6.2/B.10.

  python -m experiments.counting                 # small models (well under a minute)
  python -m experiments.counting --full          # more multipliers/precisions, N = 8192

Writes <out>/results.json and <out>/counting.png:
  (a) Prop. B.9: a token model with pe='none' and NO causal mask gives '10' and its
      ratio-preserving expansions ('1100' blocks, '1010' tiled, x m) the same representation
      at every depth; measured as max |diff| / max |ref| per depth (0 drawn at the floor =
      bitwise equal), for each precision. The causal model (same weights) is compared at the
      last position: equal at depth 1, different from depth 2 on.
  (b) Cor. B.10: one causal pass over [BOS, a, a, ..., a] (RoPE); the distance between the
      last-token outputs for n-1 and n a's (float64 reference and each precision); markers
      where they are bitwise equal, i.e. counts the model must confuse.
"""
from __future__ import annotations

import os

from absl import app, flags

import collapse_jax  # noqa: F401  (XLA guards before JAX starts)
from collapse_jax import model, plotting, precision, results, theory, xla_env

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "output directory (default runs/counting-<stamp>)")
flags.DEFINE_bool("full", False, "more multipliers and precisions; B.10 sweep to N=8192")
flags.DEFINE_integer("seed", 0, "parameter seed")
flags.DEFINE_integer("layers", 2, "B.9 model layers")
flags.DEFINE_integer("d_model", 32, "B.9 model width")
flags.DEFINE_integer("heads", 2, "B.9 model heads")
flags.DEFINE_string("base", "10", "B.9 base sequence of digits (tokens)")
flags.DEFINE_list("multipliers", None, "B.9 ratio-preserving multipliers (default 2,3,4; "
                  "--full 2,3,4,5,8)")
flags.DEFINE_list("precisions", None, "B.9 policies (default bfloat16,float32; --full adds "
                  "float16,float64)")
flags.DEFINE_integer("b10_layers", 1, "B.10 model layers")
flags.DEFINE_integer("b10_d_model", 16, "B.10 model width")
flags.DEFINE_integer("b10_heads", 1, "B.10 model heads")
flags.DEFINE_enum("b10_pe", "rope", ["rope", "sinusoidal", "alibi", "none"], "B.10 PE")
flags.DEFINE_integer("b10_n", None, "B.10 sweep length N (default 512; 8192 with --full)")
flags.DEFINE_list("b10_precisions", None, "B.10 policies (default bfloat16,float16; --full "
                  "adds float32)")
flags.DEFINE_integer("confirm", 2, "B.10: collapsed n re-checked with exact-length forwards")


def main(argv):
  del argv
  xla_env.enable_x64()
  import jax
  import numpy as np
  from collapse_jax.config import DecoderConfig

  mults = [int(m) for m in (FLAGS.multipliers or ([2, 3, 4, 5, 8] if FLAGS.full else [2, 3, 4]))]
  precs = list(FLAGS.precisions or (["bfloat16", "float16", "float32", "float64"] if FLAGS.full
                                    else ["bfloat16", "float32"]))
  b10_precs = list(FLAGS.b10_precisions or (["bfloat16", "float16", "float32"] if FLAGS.full
                                            else ["bfloat16", "float16"]))
  N = FLAGS.b10_n or (8192 if FLAGS.full else 512)
  for p in precs + b10_precs:
    precision.get_policy(p)
  out = results.make_run_dir(FLAGS.out, "counting")
  vocab = max(int(ch) for ch in FLAGS.base) + 1

  b9 = {}
  cfg0 = DecoderConfig(num_layers=FLAGS.layers, d_model=FLAGS.d_model, num_heads=FLAGS.heads,
                       vocab_size=vocab, pe="none", causal=False)
  params = model.init_params(cfg0, jax.random.PRNGKey(FLAGS.seed))  # same weights, both masks
  for causal in (False, True):
    cfg = cfg0.replace(causal=causal)
    for p in precs:
      b9[f"{'causal' if causal else 'bidirectional'}/{p}"] = theory.ratio_invariance(
          cfg, p, params, base=FLAGS.base, multipliers=mults)

  def worst(rows, depth_slice):
    return float(max(max(r["max_rel_diff"][depth_slice]) for r in rows))

  b9_summary = {}
  for k, rows in b9.items():
    b9_summary[k] = {
        "all_bitwise_equal_every_depth": [(r["multiplier"], r["arrangement"])
                                          for r in rows if all(r["bitwise_equal"])],
        "max_rel_diff_depth1": worst(rows, slice(1, 2)),
        "max_rel_diff_depth>=2": worst(rows, slice(2, None)) if FLAGS.layers >= 2 else None,
        "eps": rows[0]["eps"]}

  cfg10 = DecoderConfig(num_layers=FLAGS.b10_layers, d_model=FLAGS.b10_d_model,
                        num_heads=FLAGS.b10_heads, vocab_size=3, pe=FLAGS.b10_pe, causal=True,
                        max_len=max(4096, N))
  params10 = model.init_params(cfg10, jax.random.PRNGKey(FLAGS.seed))
  b10 = {p: theory.counting_collapse(cfg10, p, params10, N, confirm=FLAGS.confirm)
         for p in b10_precs}
  b10_summary = {p: {"first_collapse_n": r["first_collapse_n"],
                     "sustained_collapse_n": r["sustained_collapse_n"],
                     "fraction_equal": r["fraction_equal"], "wrong_count": r["wrong_count"],
                     "confirmed": r["confirmed"]} for p, r in b10.items()}

  results.write_json(os.path.join(out, "results.json"), {
      "experiment": "counting", "paper": "Prop. 6.1/B.9, Cor. 6.2/B.10",
      "flags": {"seed": FLAGS.seed, "layers": FLAGS.layers, "d_model": FLAGS.d_model,
                "heads": FLAGS.heads, "base": FLAGS.base, "multipliers": mults,
                "precisions": precs, "b10_config": cfg10.to_dict(), "b10_n": N,
                "b10_precisions": b10_precs, "confirm": FLAGS.confirm, "full": FLAGS.full},
      "environment": results.environment(),
      "b9_conditions": ("token inputs, pe='none', no sliding window, bidirectional mask; the "
                        "compared sequences are exact-length forwards with the same weights"),
      "b9_summary": b9_summary, "b9": b9, "b10_summary": b10_summary, "b10": b10})

  fig, axes = plotting.subplots(1, 2)
  ax = axes[0, 0]
  floor = 1e-9
  styles = {"blocks": "-", "tiled": "--"}
  for i, (k, rows) in enumerate(b9.items()):
    for r in rows:
      y, _ = plotting.positive_for_log(r["max_rel_diff"][1:], floor)
      x = np.arange(1, len(y) + 1) + 0.03 * i
      lab = f"{k} m={r['multiplier']}" if r["arrangement"] == "blocks" else None
      ax.plot(x, y, styles[r["arrangement"]], marker="o", ms=3, lw=0.8,
              color=f"C{i}", alpha=0.4 + 0.6 * (r["multiplier"] == mults[0]), label=lab)
  depth_names = rows[0]["depth"][1:]
  ax.set_xticks(np.arange(1, len(depth_names) + 1), depth_names)
  ax.axhline(floor, color="gray", lw=0.5, ls=":")
  ax.set(yscale="log", xlabel="depth (residual stream v^(l), final output y)",
         ylabel="max |rep(expanded) - rep(base)| / max |rep(base)|",
         title=f"Prop. B.9: '{FLAGS.base}' vs x{mults} (— blocks, -- tiled; {floor:g} = bitwise equal)")
  ax.legend(fontsize=6, ncol=2)
  ax = axes[0, 1]
  first = next(iter(b10.values()))
  if first.get("reference"):
    ax.plot(first["lengths"], first["reference_linf"], color="k", lw=1, label="float64")
  for i, (p, r) in enumerate(b10.items()):
    y, fl = plotting.positive_for_log(r["linf"], 1e-6)
    ax.plot(r["lengths"], y, color=f"C{i}", lw=0.6, label=p)
    eq = r["equal"]
    ax.plot(r["lengths"][eq], np.full(eq.sum(), 1e-6), "|", color=f"C{i}", ms=10 + 4 * i)
    wc = r["wrong_count"]
    if wc:
      ax.axvline(wc["n"], color=f"C{i}", ls=":", lw=1)
  ax.set(xscale="log", yscale="log", xlabel="n (sequence [BOS, a x (n-1)])",
         ylabel=r"$\|y_n - y_{n+1}\|_\infty$ (last token)",
         title=f"Cor. B.10: counts n-1 vs n (| at 1e-6: bitwise equal; : first confirmed)")
  ax.legend(fontsize=7)
  plotting.save(fig, os.path.join(out, "counting.png"))
  print(f"wrote {out}/results.json and counting.png")
  for k, v in b9_summary.items():
    print(f"  B.9 {k}: {v}")
  for k, v in b10_summary.items():
    print(f"  B.10 {k}: first={v['first_collapse_n']} sustained={v['sustained_collapse_n']} "
          f"frac={v['fraction_equal']:.3f} wrong_count={v['wrong_count']}")


if __name__ == "__main__":
  app.run(main)
