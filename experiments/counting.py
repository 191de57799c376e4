"""Counting (section 6, appendix B.3): Proposition 6.1/B.9 and Corollary 6.2/B.10.

  python -m experiments.counting                 # small models (well under a minute)
  python -m experiments.counting --full          # more multipliers/precisions, N = 8192

Writes <out>/results.json and <out>/counting.png (``figures.theory.counting_figure``):
  (a) Prop. B.9: a token model with pe='none' and NO causal mask gives '10' and its
      ratio-preserving expansions ('1100' blocks, '1010' tiled, x m) the same representation
      at every depth; measured as max |diff| / max |ref| per depth (0 drawn at the floor =
      bitwise equal), for each precision of --dtype. The causal model (same weights) is
      compared at the last position: equal at depth 1, different from depth 2 on.
  (b) Cor. B.10: one causal pass over [BOS, a, a, ..., a] (RoPE); the distance between the
      last-token outputs for n-1 and n a's (float64 reference and each precision of
      --b10_dtype); ticks where they are bitwise equal, i.e. counts the model must confuse.
The models are ``theory.counting.b9_models`` / ``b10_model``, as in the scorecard.
"""
from __future__ import annotations

import os

from absl import app, flags

import collapse_jax  # noqa: F401  (XLA guards before JAX starts)
from collapse_jax import cli, config as config_lib, figures, results, xla_env
from collapse_jax.theory import counting

FLAGS = flags.FLAGS
cli.define(out=None, full=False, seeds="0", layers=2, d_model=32, heads="2",
           dtype=None)  # B.9 model and precisions
flags.DEFINE_string("base", "10", "B.9 base sequence of digits (tokens)")
flags.DEFINE_list("multipliers", None, "B.9 ratio-preserving multipliers (default 2,3,4; "
                  "--full 2,3,4,5,8)")
flags.DEFINE_integer("b10_layers", 1, "B.10 model layers")
flags.DEFINE_integer("b10_d_model", 16, "B.10 model width")
flags.DEFINE_integer("b10_heads", 1, "B.10 model heads")
flags.DEFINE_enum("b10_pe", "rope", [p for p in config_lib.PE_KINDS if p != "learned"],
                  "B.10 PE")
flags.DEFINE_integer("b10_n", None, "B.10 sweep length N (default 512; 8192 with --full)")
flags.DEFINE_string("b10_dtype", None, "B.10 precisions: a comma list or 'all' (default "
                    "bfloat16,float16; --full adds float32)")
flags.DEFINE_integer("confirm", 2, "B.10: collapsed n re-checked with exact-length forwards")


def main(argv):
  del argv
  xla_env.enable_x64()
  with cli.usage_errors():
    full = FLAGS.full
    mults = cli.int_list(FLAGS.multipliers or ([2, 3, 4, 5, 8] if full else [2, 3, 4]),
                         "multipliers")
    precs = [p.name for p in cli.policies(FLAGS.dtype or (
        "bfloat16,float16,float32,float64" if full else "bfloat16,float32"))]
    b10_precs = [p.name for p in cli.policies(FLAGS.b10_dtype or (
        "bfloat16,float16,float32" if full else "bfloat16,float16"))]
    seed = cli.one(cli.int_list(FLAGS.seeds, "seeds"), "seeds")
    N = FLAGS.b10_n or (8192 if full else 512)
    models = counting.b9_models(layers=FLAGS.layers, d_model=FLAGS.d_model, base=FLAGS.base,
                                heads=cli.one(cli.int_list(FLAGS.heads, "heads"), "heads"),
                                seed=seed)
    cfg10, params10 = counting.b10_model(N, layers=FLAGS.b10_layers, d_model=FLAGS.b10_d_model,
                                         heads=FLAGS.b10_heads, pe=FLAGS.b10_pe, seed=seed)
  out = cli.run_dir(FLAGS.out, "counting")

  b9 = counting.b9_sweep(models, precs, base=FLAGS.base, multipliers=mults)
  b9_summary = counting.b9_summary(b9)
  b10 = {p: counting.counting_collapse(cfg10, p, params10, N, confirm=FLAGS.confirm)
         for p in b10_precs}
  b10_summary = counting.b10_summary(b10)

  results.write_json(os.path.join(out, "results.json"), {**results.header(
      "counting", cli.app_flags(), config=cfg10, paper="Prop. 6.1/B.9, Cor. 6.2/B.10",
      settings={"seeds": [seed], "heads": models[False][0].num_heads, "multipliers": mults,
                "dtype": precs, "b10_n": N, "b10_dtype": b10_precs, "full": full}),
      "b9_conditions": ("token inputs, pe='none', no sliding window, bidirectional mask; the "
                        "compared sequences are exact-length forwards with the same weights"),
      "b9_summary": b9_summary, "b9": b9, "b10_summary": b10_summary, "b10": b10})
  figures.theory.counting_figure(b9, b10, os.path.join(out, "counting.png"), base=FLAGS.base)
  print(f"wrote {out}/results.json and counting.png")
  for k, v in b9_summary.items():
    print(f"  B.9 {k}: {v}")
  for k, v in b10_summary.items():
    print(f"  B.10 {k}: first={v['first_collapse_n']} sustained={v['sustained_collapse_n']} "
          f"frac={v['fraction_equal']:.3f} wrong_count={v['wrong_count']}")


if __name__ == "__main__":
  app.run(main)
