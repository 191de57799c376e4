"""Synthetic collapse (C.3 / Figs 8, 10): the copied-vector pair, decay, onset prediction."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

import collapse_jax as cj
from collapse_jax import engines, pairs as fam, model, sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_copied_vector_pair_matches_exact_forwards_float64():
  """copy='vector': B_n's copy of the last token keeps position n-1 (sinusoidal PE), so
  B_n = A_n with its last input VECTOR repeated. Both engines equal exact forwards."""
  cfg = cj.DecoderConfig(num_layers=1, d_model=16, num_heads=1, use_mlp=False, pe="sinusoidal",
                         vocab_size=64, init_var=1 / 16)
  pol = cj.get_policy("float64")
  params = model.init_params(cfg, jax.random.key(0))
  f = fam.make_family("stream_repeat_last", 24, seed=0, vocab_size=64, copy="vector")
  lengths = np.asarray([2, 5, 11, 24])
  fwd = jax.jit(lambda p, x, pos: model.forward(cfg, pol, p, x, positions=pos, collect=("heads",)))
  for engine in ("kv_cache", "masked"):
    out = engines.run(cfg, pol, jax.tree_util.tree_map(lambda x: x[None], params), [f],
                      lengths, engine=engine)
    for i, n in enumerate(lengths):
      seq = np.asarray(fam.appended_pair_tokens(f.tokens, 1, n, n + 1))
      pos_b = np.minimum(np.arange(n + 1), n - 1)
      a = fwd(params, jnp.asarray(seq[:n])[None], jnp.asarray(np.arange(n))[None])
      b = fwd(params, jnp.asarray(seq)[None], jnp.asarray(pos_b)[None])
      ref = np.abs(np.asarray(a["heads"])[0, 0, -1] - np.asarray(b["heads"])[0, 0, -1]).max()
      np.testing.assert_allclose(out["head_linf"][0, 0, i], ref, rtol=1e-9, atol=1e-14)


def test_fig8_distance_decays_and_prediction_is_recorded():
  lengths = fam.parse_lengths("log:2:512:12")
  _, recs = sweep.synthetic_collapse_grid("sinusoidal", 1 / 32, lengths, [0], ["bfloat16"],
                                          d_model=32, vocab=256, log=lambda *a: None)
  ref = next(r for r in recs if r["dtype"] == "float64")
  d = np.asarray(ref["attn_linf"])
  assert d[-1] < 0.25 * d[np.argmin(abs(lengths - 16))]  # Theorem B.3: converges
  assert ref["attn_onset"] == -1  # float64 never bitwise equal here
  bf = next(r for r in recs if r["dtype"] == "bfloat16")
  assert isinstance(bf["predicted_onset"], int) and isinstance(bf["attn_onset"], int)


def test_synthetic_collapse_app_end_to_end(tmp_path):
  out = tmp_path / "syn"
  r = subprocess.run([sys.executable, "-m", "experiments.synthetic_collapse", "--max_len=64",
                      "--points=8", "--dtypes=bfloat16", "--d_model=16", f"--out={out}"],
                     capture_output=True, text=True, cwd=ROOT)
  assert r.returncode == 0, r.stderr[-2000:]
  res = json.load(open(out / "results.json"))
  assert {r["dtype"] for r in res["runs"]} == {"float64", "bfloat16"}
  for key in ("attn_linf", "attn_onset", "predicted_onset", "pe"):
    assert key in res["runs"][0]
  assert (out / "synthetic_collapse.png").stat().st_size > 10_000
