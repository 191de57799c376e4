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


def test_thinned_grid_keeps_short_grids_and_thins_long_ones():
  short = np.arange(1, sweep.THIN_ABOVE + 1)
  assert np.array_equal(sweep.thinned(short), short)  # up to THIN_ABOVE n: every n
  grid = np.arange(1, 8193)
  t = sweep.thinned(grid)
  assert np.array_equal(t[:sweep.THIN_DENSE], np.arange(1, sweep.THIN_DENSE + 1))
  assert t[-1] == 8192 and np.isin(t, grid).all() and np.all(np.diff(t) > 0)
  for lo in (128, 256, 512, 1024, 2048, 4096):  # about THIN_PER_OCTAVE n in every octave
    count = int(((t > lo) & (t <= 2 * lo)).sum())
    assert abs(count - sweep.THIN_PER_OCTAVE) <= 1, (lo, count)
  assert len(t) == 321


def test_first_equal_octave_adds_the_octave_the_thinned_grid_skipped():
  grid, ran = np.arange(1, 8193), np.array([1, 2, 3, 2900, 3100, 8192])
  lo, hi, union = sweep.first_equal_octave(grid, ran, 2900)
  assert (lo, hi) == (2048, 4096)
  assert np.array_equal(union, np.union1d(ran, np.arange(2048, 4096)))
  assert sweep.first_equal_octave(grid, ran, -1) is None  # never equal
  assert sweep.first_equal_octave(grid, ran, 2) is None  # its octave [2, 4) was run whole
