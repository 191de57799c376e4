"""Records (collapse_jax/records.py): summaries, CSV rows, compact records, cross-checks."""
import json

import jax.numpy as jnp
import numpy as np

from collapse_jax import engines, records, results


def _raw(seed_count=1):
  """pair_metrics of hand-made A/B: S=4 n, L+1=2 layers, H=2 heads; n=3 equal, n=4 NaN in y."""
  S, D = 4, 3
  a_y = np.arange(S * D, dtype=np.float32).reshape(S, D)
  b_y = a_y + np.asarray([[0.5], [0.25], [0.0], [0.0]], np.float32)
  b_y[3, 1] = np.nan
  res_a = np.stack([a_y, a_y])
  res_b = np.stack([b_y, a_y])  # layer 1 always equal
  heads_a = np.ones((S, 2, 2), np.float32)
  heads_b = heads_a.copy()
  heads_b[0, 1] += 1
  m = engines.pair_metrics({"y": jnp.asarray(a_y), "residual": jnp.asarray(res_a), "heads": jnp.asarray(heads_a)},
                           {"y": jnp.asarray(b_y), "residual": jnp.asarray(res_b), "heads": jnp.asarray(heads_b)})
  return {k: np.stack([np.asarray(v)] * seed_count) for k, v in m.items()}


def test_summary_onsets_and_csv_rows():
  rec = records.summarize(_raw(), np.asarray([10, 20, 30, 40]), 0)
  np.testing.assert_array_equal(rec["bitwise_equal"], [False, False, True, False])
  assert rec["collapse_onset"] == 30 and rec["sustained_onset"] == -1  # NaN is never equal
  assert rec["layers"][1]["sustained_onset"] == 10 and rec["nonfinite_total"] == 2
  assert rec["last_layer_heads"]["collapse_onset"] == 20
  rec.update(dtype="float32", heads=2, seed=0, engine="causal")
  rows = list(records.csv_rows(rec))
  assert [r["n"] for r in rows] == [10, 20, 30, 40] and rows[0]["linf"] == 0.5
  assert set(rows[0]) == set(records.csv_columns(1))


def test_compact_record_and_cross_check_are_json_ready():
  rec = records.summarize(_raw(), np.asarray([10, 20, 30, 40]), 0)
  rec.update(dtype="bfloat16", pairs="a", engine="exact", seed=0)
  c = records.compact(rec)
  assert c["y"]["equal_n"] == [30] and c["y"]["min"] == 0.0 and c["y"]["n_at_min"] == 30
  assert c["last_layer_heads"]["all_heads_equal_n"] == [20, 30, 40]
  assert c["nonfinite"]["n_with_nonfinite_y"] == 1 and c["nonfinite"]["first_layer_with_nonfinite"] == 0
  assert c["dtype"] == "bfloat16" and c["pairs"] == "a"
  other = dict(c, engine="causal", y=dict(c["y"], linf=np.asarray(c["y"]["linf"]) * 2))
  x = records.cross_check(c, other)
  assert x["y"]["max_ratio"] == 2.0 and x["engine"] == "causal"
  text = json.dumps(results.to_jsonable({"run": c, "check": x}))
  assert '"nan"' in text  # the NaN distance at n=40 is encoded, not dropped


def test_console_lines_name_onsets_and_nonfinite_values():
  rec = records.summarize(_raw(), np.asarray([10, 20, 30, 40]), 0)
  rec.update(dtype="float16", pairs="a", engine="causal", seed=0, window="global")
  c = records.compact(rec)
  line = records.compact_line(c)
  assert line.startswith("(a)") and "window=global" in line and "y: first equal n=30" in line
  assert "nonfinite values=2 (from layer 0, y at 1 n)" in line
  x = records.cross_check_line({**records.cross_check(c, dict(c, engine="causal")), "pairs": "a",
                                "dtype": "float16"})
  assert x.startswith("cross-check (a) float16: exact vs causal max distance ratio")
