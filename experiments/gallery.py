"""The gallery: every figure of the suite, drawn from small synthetic records, in one place.

  python -m experiments.gallery --out=runs/gallery          # ~30 s on 2 CPU cores
  python -m experiments.gallery --figures=tasks_accuracy,tasks_bridge

No model runs: the inputs are built by ``collapse_jax.figures.samples`` in the shape of each
experiment's records. Every figure is render-checked (``collapse_jax.figures.check``: texts
inside the canvas and not overlapping, x ticks reaching the data's end, markers on their
series, plain log labels) and written as <out>/<name>.png, with <out>/index.html showing
them all with their check results. The directory is written whole: into a temporary sibling,
renamed at the end. Exit status 1 when a figure fails a check (the gallery is still written).
"""
from __future__ import annotations

import dataclasses
import sys
import time

from absl import app, flags

import collapse_jax  # noqa: F401  (XLA guards before JAX starts)
from collapse_jax import cli
from collapse_jax.figures import gallery, samples

F = flags.FLAGS


def define_flags(fv: flags.FlagValues) -> None:
  cli.define(fv, out=None)
  flags.DEFINE_list("figures", None, "draw only these figures (default: all of "
                    + ", ".join(samples.SAMPLES) + ")", flag_values=fv)


@dataclasses.dataclass(frozen=True)
class Spec:
  """A gallery, parsed: ``names``, the figures drawn (``samples.SAMPLES`` keys, in order)."""
  names: list
  flags: dict


def parse(fl: dict) -> Spec:
  """Flags (``cli.app_flags()`` or ``cli.parse_argv``) -> :class:`Spec`; ValueError (one
  line) on an unknown figure. Reads no absl global."""
  names = fl["figures"] or list(samples.SAMPLES)
  unknown = [n for n in names if n not in samples.SAMPLES]
  if unknown:
    raise ValueError(f"unknown --figures {unknown}; known: {', '.join(samples.SAMPLES)}")
  return Spec(list(names), dict(fl))


def main(argv):
  del argv
  t0 = time.perf_counter()
  with cli.usage_errors():
    spec = parse(cli.app_flags(__file__))
  out = cli.run_dir(spec.flags["out"], "gallery")
  found = gallery.write_gallery(out, spec.names)
  bad = {n: p for n, p in found.items() if p}
  for name, problems in bad.items():
    print(f"{name}.png fails {len(problems)} render check(s):\n  " + "\n  ".join(problems))
  print(f"{len(found) - len(bad)} of {len(found)} figures pass the render checks; wrote "
        f"{out}/index.html and {len(found)} PNGs in {time.perf_counter() - t0:.1f}s")
  sys.exit(1 if bad else 0)


if __name__ == "__main__":
  define_flags(F)
  app.run(main)
