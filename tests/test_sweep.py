"""The sweep (collapse_jax/sweep.py): run_grid over models, policies and pair sets."""
import numpy as np
import pytest

import collapse_jax as cj
from collapse_jax import pairs, records, sweep

CFG = cj.DecoderConfig(num_layers=1, d_model=16, num_heads=2, vocab_size=8)


@pytest.mark.slow  # about 15 s unloaded; moved to keep the default tier under 5 minutes
def test_run_grid_labels_records_and_orders_them():
  pols = [cj.get_policy("float32"), cj.get_policy("bfloat16")]
  recs = sweep.family_grid(CFG, pols, [1, 2], "prefix_repeat", np.arange(5, 30), [0, 3],
                           prefix_len=4, log=lambda *a: None)
  keys = [(r["heads"], r["dtype"], r["seed"]) for r in recs]
  assert keys == [(h, p.name, s) for h in (1, 2) for p in pols for s in (0, 3)]
  for r in recs:
    assert r["engine"] == "causal" and r["pairs"] == "prefix_repeat" and r["copy"] == "token"
    assert len(r["linf"]) == 25 and len(list(records.csv_rows(r))) == 25


def test_run_grid_checks_seed_counts():
  model = sweep.synthetic_models(CFG, [2], [0])[0]
  f = pairs.make_family("repeat", 8, seed=0, vocab_size=8)
  with pytest.raises(ValueError, match="2 sets for 1 seeds"):
    sweep.run_grid([model], [cj.get_policy("float32")], {"r": [f, f]}, [2, 3], [0])


@pytest.mark.slow
def test_fig8_distance_decays_and_prediction_is_recorded():
  lengths = pairs.parse_lengths("log:2:512:12")
  _, recs = sweep.synthetic_collapse_grid("sinusoidal", 1 / 32, lengths, [0], ["bfloat16"],
                                          d_model=32, vocab=256, log=lambda *a: None)
  ref = next(r for r in recs if r["dtype"] == "float64")
  d = np.asarray(ref["attn_linf"])
  assert d[-1] < 0.25 * d[np.argmin(abs(lengths - 16))]  # Theorem B.3: converges
  assert ref["attn_onset"] == -1  # float64 never bitwise equal here
  bf = next(r for r in recs if r["dtype"] == "bfloat16")
  assert isinstance(bf["predicted_onset"], int) and isinstance(bf["attn_onset"], int)
