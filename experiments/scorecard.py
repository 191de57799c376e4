"""Scorecard: every theory check of the paper, measured, in one table.

  python -m experiments.scorecard                    # small, fast settings
  python -m experiments.scorecard --full             # paper scale
  python -m experiments.scorecard --only=b4,b6_b7    # a subset (check names)

Prints a table (claim, paper reference, our measured number, PASS/FAIL/info) and writes
<out>/scorecard.md and <out>/scorecard.json. The checks, their settings and their pass
criteria live in ``collapse_jax.theory.scorecard`` (add a check there with ``register``).
"""
from __future__ import annotations

import os

from absl import app, flags

import collapse_jax  # noqa: F401  (XLA guards before JAX starts)
from collapse_jax import cli, results, xla_env
from collapse_jax.theory import scorecard

FLAGS = flags.FLAGS
cli.define(out=None, full=False)
flags.DEFINE_list("only", None, "run only these check names ("
                  + ", ".join(c.name for c in scorecard.CHECKS) + ")")


def main(argv):
  del argv
  xla_env.enable_x64()
  with cli.usage_errors():
    names = scorecard.check_names(FLAGS.only)
  out = cli.run_dir(FLAGS.out, "scorecard")
  rows = scorecard.run(names, FLAGS.full)
  md = scorecard.to_markdown(rows)
  with open(os.path.join(out, "scorecard.md"), "w") as f:
    f.write(f"# Scorecard ({'full' if FLAGS.full else 'fast'} settings)\n\n" + md)
  results.write_json(os.path.join(out, "scorecard.json"), results.header(
      "scorecard", cli.app_flags(), rows=rows, **scorecard.tally(rows)))
  print(md)
  print(f"wrote {out}/scorecard.md and scorecard.json")


if __name__ == "__main__":
  app.run(main)
