"""collapse_jax.attribution: the points a model's y depends on, the variants made from a base
policy, and the per-variant summary (onset, octave fractions, floor in ulps, first differing
layer) checked on hand-made records."""
import numpy as np
import pytest

from collapse_jax import attribution, precision, records
from collapse_jax.config import DecoderConfig
from collapse_jax.figures import samples

BF16 = precision.get_policy("bfloat16")


def test_model_points_follow_the_config():
  plain = DecoderConfig(num_layers=1, d_model=16, num_heads=2)
  pts = attribution.model_points(plain)
  assert pts == ["embed", "norm", "qkv", "rope", "scores", "probs", "heads", "attn_out",
                 "residual", "mlp_hidden", "mlp_act", "mlp_out", "final_norm"]
  gemma = plain.replace(embed_scale=True, qk_norm=True, post_norms=True, attn_softcap=50.0,
                        final_softcap=30.0, vocab_size=10)
  assert set(attribution.model_points(gemma)) - set(pts) == {
      "embed_scale", "qk_norm", "post_norm", "attn_softcap"}  # never the logits points
  assert "rope" not in attribution.model_points(plain.replace(pe="alibi"))


def test_variants_name_and_round_what_they_say():
  pts = ["norm", "probs", "residual"]
  vs = {v.name: v for v in attribution.variants(BF16, ["drop", "only", "groups"], pts)}
  assert vs["bfloat16:all"].round_at == precision.ALL_POINTS
  assert vs["bfloat16:none"].round_at == frozenset()
  assert vs["bfloat16:drop:probs"].round_at == precision.ALL_POINTS - {"probs"}
  assert vs["bfloat16:only:norm"].round_at == {"norm"}
  assert vs["bfloat16:only:@attention"].round_at == {"probs"}  # the group's points used here
  assert vs["bfloat16:drop:@norms"].round_at == precision.ALL_POINTS - {"norm"}
  assert "bfloat16:angles:float64" not in vs  # 'rope' is not in ``pts``
  angles = attribution.variants(BF16, ["groups"], ["rope"])[-1]
  assert angles.name == "bfloat16:angles:float64" and angles.round_at == precision.ALL_POINTS
  assert angles.rope_angle_dtype == np.float64 and angles.needs_x64
  assert "bfloat16:only:@mlp" not in vs  # no MLP point in ``pts``
  assert all(v.param_dtype == BF16.param_dtype and v.storage_dtype == BF16.storage_dtype
             for v in vs.values())
  assert len(attribution.variants(BF16, ["drop"], pts)) == 2 + 3
  with pytest.raises(ValueError, match="unknown attribution kinds"):
    attribution.variants(BF16, ["swap"], pts)
  with pytest.raises(ValueError, match="rounds at every point"):
    attribution.variants(vs["bfloat16:drop:probs"], ["drop"], pts)


def test_summary_of_a_record():
  n = np.arange(17, 80)
  rec = {**samples.run_record("bfloat16", 1, 0, n), "dtype": "bfloat16:drop:rope"}
  row = attribution.summarize(rec, BF16.storage_dtype)
  equal = np.asarray(rec["bitwise_equal"])
  assert row["variant"] == "drop:rope" and row["equal"] == equal.sum() and row["n"] == n.size
  assert row["onset"] == (n[equal][0] if equal.any() else -1)
  assert row["octaves"] == {"2^4": equal[n < 32].mean(), "2^5": equal[(n >= 32) & (n < 64)].mean(),
                            "2^6": equal[n >= 64].mean()}
  if equal.any():
    assert row["floor_ulps"] == 0.0 and equal[list(n).index(row["floor_n"])]
  lines = attribution.table([row])
  assert len(lines) == 2 and lines[1].startswith("drop:rope")
  assert attribution.summarize(records.compact(rec), BF16.storage_dtype) == row  # the real-model form


def test_floor_in_ulps_and_first_differing_layer():
  n = np.array([20, 40, 80])
  layers = [{"layer": l, "bitwise_equal": np.array([l == 0, l <= 1, True])} for l in range(3)]
  rec = {"dtype": "bfloat16:all", "lengths": n, "linf": np.array([2 ** -6, 2 ** -8, 0.0]),
         "absmax": np.array([1.5, 1.5, 1.5]), "bitwise_equal": np.array([False, False, True]),
         "collapse_onset": 80, "sustained_onset": 80, "layers": layers}
  row = attribution.summarize(rec, BF16.storage_dtype)  # bf16 ulp at 1.5: 2^-7
  assert row["floor_ulps"] == 0.0 and row["floor_n"] == 80 and row["first_differing_layer"] == -1
  rec["linf"] = np.array([2 ** -6, 2 ** -8, 2 ** -5])
  row = attribution.summarize(rec, BF16.storage_dtype)
  assert row["floor_ulps"] == 0.5 and row["floor_n"] == 40 and row["first_differing_layer"] == 2


def test_octave_fractions_pool_each_power_of_two():
  """The fraction of swept n that are equal, per octave [2^k, 2^(k+1)) (metrics.octave_lo);
  2^k itself opens its octave."""
  got = attribution.octave_fractions([3, 4, 5, 7, 8, 20], [1, 0, 1, 1, 0, 1])
  assert got == {"2^1": 1.0, "2^2": 2 / 3, "2^3": 0.0, "2^4": 1.0}
