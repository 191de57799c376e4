"""The engine timings (collapse_jax/bench.py) at a tiny size: every time measured, positive,
and the scaling cell's plan is the one engines.plan makes. The printed ratios are
experiments/bench_sweep.py's (tests/test_experiments.py, slow)."""
import pytest

import collapse_jax as cj
from collapse_jax import bench, engines, memory, pairs, precision


@pytest.mark.long  # with slow: outside CI's 30 minutes (pytest -m long)
@pytest.mark.slow  # compiles eight programs (~27 s)
def test_engine_timings_and_scaling_cell_measure_every_entry():
  cfg = cj.DecoderConfig(num_layers=1, d_model=16, num_heads=2, vocab_size=32)
  pol = precision.get_policy("bfloat16")
  t = bench.engine_timings(cfg, pol, 12, repeats=1, loop_lengths=3)
  assert t["loop_lengths"] == 3
  for k in ("sweep_first_s", "sweep_s", "unblocked_s", "masked_s", "forward_s", "loop_each_s"):
    assert t[k] > 0, k
  c = bench.scaling_cell(cfg, pol, 40, repeats=2, memory_budget_gib=1.0)
  f = pairs.make_family("repeat", 40, seed=0, vocab_size=32)
  plan = engines.plan(cfg.replace(max_len=41), pol, f, pairs.parse_lengths("log:1:40:200"),
                      memory_budget=memory.GiB)
  assert c["query_chunk"] == plan.query_chunk and len(c["ratios"]) == 2
  assert c["sweep_s"] > 0 and c["forward_s"] > 0 and c["peak_rss_gib"] > 0
