r"""RoPE under a position shift (AnchorAttention's check, issue 26): are the attention logits
of the same tokens at positions p + Δ1 and p + Δ2 the same, as RoPE promises?

  python -m experiments.rope_shift                        # synthetic model, f32 and bf16
  python -m experiments.rope_shift --model=smollm2 --lengths=256,1024 --samples=2

For each precision (--dtype), with RoPE's angles in that precision's compute dtype and (with
--f64_angles) in float64, each sequence length N (--lengths) and shift Δ (--shifts, each
against Δ = 0): D(X, 0, Δ), the sum over layers and heads of the mean |logit difference|
over the pairs a layer sees, averaged over --samples random token sequences (real models: the
first token of the model's prompts, BOS or the chat turn's opening token, then random ids), and the share of the difference that sits in the first token's column
(collapse_jax/rope_shift.py). Writes results.json and rope_shift.png (D and the first-token
share against N) to --out. A job of cells (precision x angles x N): --resume finishes a run.
"""

import dataclasses
import functools
import sys

import jax
import numpy as np
from absl import app, flags

from collapse_jax import (checkpoints, cli, figures, hosts, jobs, model, prompts, results,
                          rope_shift, xla_env)

F = flags.FLAGS


def define_flags(fv: flags.FlagValues) -> None:
  cli.define(fv, dtype="float32,bfloat16", seeds=["0"], heads=["4"], layers=2, d_model=64,
             norm="layernorm", mlp="gelu", vocab=32, out=None, plot=True, **cli.JOB)
  flags.DEFINE_string("model", "synthetic", "'synthetic' (the --layers/--d_model/... RoPE "
                      "model, one head count: --heads) or a real model: a name of "
                      "collapse_jax.checkpoints.MODELS or a local path", flag_values=fv)
  flags.DEFINE_list("lengths", ["128", "256", "512", "1024"], "sequence lengths N",
                    flag_values=fv)
  flags.DEFINE_list("shifts", ["16", "500", "2000"], "position shifts Δ, each against Δ = 0",
                    flag_values=fv)
  flags.DEFINE_integer("samples", 4, "random token sequences per N", flag_values=fv)
  flags.DEFINE_bool("f64_angles", True, "also run every precision with RoPE's angles in "
                    "float64 (Policy.rope_angle_dtype)", flag_values=fv)


@dataclasses.dataclass(frozen=True)
class Spec:
  """A run, parsed: ``policies`` (each precision, then its float64-angle twin), ``lens``,
  ``shifts``, ``cfg`` (None: the real model named by flags['model'])."""
  policies: list
  lens: list
  shifts: list
  cfg: object
  flags: dict


def parse(fl: dict) -> Spec:
  """Flags -> :class:`Spec`; ValueError (one line) on a bad value. Loads no model."""
  pols = cli.policies(fl["dtype"])
  if any(p.compute_dtype == np.float64 for p in pols):
    raise ValueError("--dtype=float64 computes its angles in float64 already: its D is the "
                     "float64 floor; compare narrower presets")
  if fl["f64_angles"]:
    pols = [q for p in pols for q in (p, dataclasses.replace(
        p, name=p.name + "+f64_angles", rope_angle_dtype="float64"))]
  lens = cli.int_list(fl["lengths"], "lengths", minimum=2)
  shifts = cli.int_list(fl["shifts"], "shifts", minimum=1)
  if fl["samples"] < 1:
    raise ValueError(f"--samples must be >= 1, got {fl['samples']}")
  cfg = None
  if fl["model"] == "synthetic":
    cli.one(fl["heads"], "heads")
    cfg = cli.decoder_config({**fl, "pe": "rope"}, max_len=max(lens) + max(shifts))
  else:
    cli.check_model(fl["model"])
  cli.one(fl["seeds"], "seeds")
  jobs.check_job_flags(fl, cli.job_spec(fl))
  return Spec(pols, lens, shifts, cfg, dict(fl))


def _cells(spec: Spec) -> dict:
  return {f"{p.name}/N={n}": (p, n) for p in spec.policies for n in spec.lens}


def main(argv):
  del argv
  with cli.usage_errors():
    spec = parse(cli.app_flags(__file__))
  fl = spec.flags
  xla_env.enable_x64()  # the float64 sums and angles
  with cli.usage_errors():
    procs = hosts.start_processes(fl["coordinator"], fl["num_processes"], fl["process_id"],
                                  fl["distributed"])
  seed = int(fl["seeds"][0])
  if spec.cfg is None:
    ckpt = cli.load_model(fl["model"])
    cfg, params32, label = ckpt.config, ckpt.params, ckpt.label
    # the first token the model's prompts start with (BOS, or the chat turn's opening token)
    bos = checkpoints.encode(ckpt.tokenizer, prompts.prompt_text("1", ckpt.prompt_format),
                             bos=True)[0]
  else:
    cfg, bos = spec.cfg, None
    params32 = model.init_params(cfg, jax.random.key(seed))
    label = f"synthetic {cfg.num_layers}L d={cfg.d_model} H={cfg.num_heads} rope"
  cells = _cells(spec)
  run_cells = lambda ids, save: [save(i, rope_shift.cell(cfg, params32, *cells[i], spec.shifts,
                                                         fl["samples"], seed, bos)) for i in ids]
  with jobs.exit_on_failure():
    jobs.run_job(run_cells, functools.partial(_assemble, spec, cells, label, procs),
                 out=fl["out"], prefix="rope_shift", experiment="rope_shift",
                 spec=cli.job_spec(fl), cell_ids=list(cells), procs=procs,
                 heartbeat_s=fl["heartbeat"], argv=sys.argv, module=__spec__.name)


def _assemble(spec, cells, label, procs, out, shards):
  fl = spec.flags
  recs = [shards[i]["record"] for i in cells]
  results.write_json(f"{out}/results.json",
                     results.header("rope_shift", fl, policies=spec.policies,
                                    layout=hosts.layout(procs), model=label, cells=recs))
  print(f"{label}: D(X, 0, Δ) (mean over {fl['samples']} sequences) and the first token's "
        "share of |Δ logits|")
  print(f"{'policy':>24} {'N':>6} " + " ".join(f"{'D Δ=' + str(d):>12} {'share':>6}"
                                                for d in spec.shifts))
  for r in recs:
    print(f"{r['policy']:>24} {r['N']:>6} " + " ".join(
        f"{np.mean(row['D']):12.4g} {np.mean(row['first_share']):6.3f}" for row in r["rows"]))
  if fl["plot"]:
    figures.attribution.rope_shift_figure(recs, f"{out}/rope_shift.png",
                                     f"{label}: RoPE logits at positions p + Δ vs p")
  print(f"wrote {out}/results.json" + (", rope_shift.png" if fl["plot"] else ""))


if __name__ == "__main__":
  define_flags(F)
  app.run(main)
