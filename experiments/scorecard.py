"""Scorecard: every theory check of the paper, measured, in one table.

  python -m experiments.scorecard                    # small, fast settings
  python -m experiments.scorecard --full             # paper scale
  python -m experiments.scorecard --only=b4,b6_b7    # a subset (check names)

Prints a table (claim, paper reference, our measured number, PASS/FAIL/info) and writes
<out>/scorecard.md and <out>/scorecard.json. The checks, their settings and their pass
criteria live in ``collapse_jax.theory.scorecard`` (add a check there with ``register``);
--full is passed to each check, which holds its own small and full settings.
"""
from __future__ import annotations

import dataclasses
import os

from absl import app, flags

import collapse_jax  # noqa: F401  (XLA guards before JAX starts)
from collapse_jax import cli, results, xla_env
from collapse_jax.theory import scorecard


def define_flags(fv: flags.FlagValues) -> None:
  cli.define(fv, out=None, full=False)
  flags.DEFINE_list("only", None, "run only these check names ("
                    + ", ".join(c.name for c in scorecard.CHECKS) + ")", flag_values=fv)


@dataclasses.dataclass(frozen=True)
class Spec:
  """A scorecard run, parsed: ``names`` the checks to run (None: every registered check),
  ``full`` each check's paper-scale settings (``scorecard.run_checks``)."""
  names: set | None
  full: bool
  flags: dict


def parse(fl: dict) -> Spec:
  """Flags (``cli.app_flags()`` or ``cli.parse_argv``) -> :class:`Spec`; an unknown check
  name is a one-line ValueError. Reads no absl global."""
  return Spec(scorecard.check_names(fl["only"]), fl["full"], dict(fl))


def main(argv):
  del argv
  with cli.usage_errors():
    spec = parse(cli.app_flags(__file__))
  xla_env.enable_x64()
  out = cli.run_dir(spec.flags["out"], "scorecard")
  rows = scorecard.run_checks(spec.names, spec.full)
  md = scorecard.to_markdown(rows)
  with open(os.path.join(out, "scorecard.md"), "w") as f:
    f.write(f"# Scorecard ({'full' if spec.full else 'fast'} settings)\n\n" + md)
  results.write_json(os.path.join(out, "scorecard.json"), results.header(
      "scorecard", spec.flags, rows=rows, **scorecard.tally(rows)))
  print(md)
  print(f"wrote {out}/scorecard.md and scorecard.json")


if __name__ == "__main__":
  define_flags(flags.FLAGS)
  app.run(main)
