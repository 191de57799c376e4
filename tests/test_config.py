"""DecoderConfig (collapse_jax/config.py): every bad option is a one-line ValueError on
construction, the derived sizes, window modes, token-id checks, and a dict round trip.
Pure Python: no JAX program runs here (the options' effect on a forward: tests/test_model.py)."""
import math
import re

import pytest

from collapse_jax.config import DecoderConfig, check_token_ids, window_mode


@pytest.mark.parametrize("kw,msg", [
    (dict(num_layers=0), "num_layers must be >= 1"),
    (dict(d_model=0), "d_model must be >= 1"),
    (dict(mlp="relu"), "unknown mlp 'relu'"),
    (dict(norm="batchnorm"), "unknown norm"),
    (dict(pe="xpos"), "unknown pe"),
    (dict(rope_layout="spiral"), "unknown rope_layout"),
    (dict(d_model=32, num_heads=3), "does not divide d_model=32"),
    (dict(num_heads=4, num_kv_heads=3), "must divide num_heads=4"),
    (dict(d_model=12, num_heads=4), "RoPE needs an even head_dim, got 3"),
    (dict(pe="sinusoidal", d_model=9, num_heads=1), "sinusoidal PE needs an even d_model"),
    (dict(sliding_window=0), "sliding_window must be >= 1"),
    (dict(num_layers=2, layer_windows=(4,)), "has 1 entries for 2 layers"),
    (dict(num_layers=2, layer_windows=(0, None)), "entries must be ints >= 1"),
    (dict(num_layers=1, layer_rope_thetas=(0.0,)), "numbers > 0"),
    (dict(num_layers=1, layer_windows=(4,), sliding_window=4), "not both"),
    (dict(num_layers=1, layer_rope_thetas=(10.0,), pe="alibi"), "needs pe='rope'"),
    (dict(rope_scaling=("yarn", 4.0)), "rope_scaling must be (), ('linear', factor)"),
    (dict(rope_scaling=("linear",)), "rope_scaling must be"),
    (dict(rope_scaling=("linear", 0.0)), "numbers must be > 0"),
    (dict(rope_scaling=("llama3", 8.0, 4.0, 1.0, 8192)), "high_freq_factor > low_freq_factor"),
    (dict(rope_scaling=("linear", 2.0), pe="alibi"), "rope_scaling needs pe='rope'"),
    (dict(attn_softcap=0.0), "attn_softcap must be a number > 0 or None"),
    (dict(final_softcap=-30.0), "final_softcap must be a number > 0 or None"),
])
def test_bad_options_fail_on_construction(kw, msg):
  with pytest.raises(ValueError, match=re.escape(msg)) as e:
    DecoderConfig(**kw)
  assert str(e.value).startswith("DecoderConfig: ") and "\n" not in str(e.value)


def test_derived_sizes_and_per_layer_options():
  c = DecoderConfig(num_layers=2, d_model=32, num_heads=4, num_kv_heads=2,
                    layer_windows=[5, None], layer_rope_thetas=[10.0, 1e4])
  assert (c.kv_heads, c.dh, c.ff, c.variance, c.qk_scale) == (2, 8, 128, 1 / 32, 1 / math.sqrt(8))
  assert c.layer_windows == (5, None)  # lists become tuples (hashable: jit's static config)
  assert (c.window(0), c.window(1), c.rope_base(0), c.rope_base(1)) == (5, None, 10.0, 1e4)
  assert c.windowed and hash(c) == hash(DecoderConfig(**c.to_dict()))
  d = DecoderConfig(d_model=16, num_heads=2, head_dim=6, mlp_dim=40, init_var=0.5,
                    query_scale=0.3, sliding_window=3)
  assert (d.dh, d.ff, d.variance, d.qk_scale, d.window(0)) == (6, 40, 0.5, 0.3, 3)


def test_window_modes():
  assert window_mode("native") == "native" and window_mode("512") == 512 and window_mode(3) == 3
  for bad, msg in (("local", "native', 'global' or a window size"), (0, ">= 1 token"),
                   (True, "window size")):
    with pytest.raises(ValueError, match=msg):
      window_mode(bad)
  c = DecoderConfig(num_layers=3, layer_windows=(4, 4, None), layer_rope_thetas=(1.0, 1.0, 9.0))
  assert c.with_windows("native") is c
  g = c.with_windows("global")
  assert g.layer_windows == (None,) * 3 and not g.windowed and g.rope_base(2) == 9.0
  assert c.with_windows("7").layer_windows == (7, 7, 7)


def test_token_ids_and_lengths_are_checked_on_the_host():
  check_token_ids([0, 9], 10)
  with pytest.raises(ValueError, match=r"prefix \[10, -1\] outside the model vocabulary \[0, 10\)"):
    check_token_ids([3, 10, -1], 10, "prefix")
  DecoderConfig(vocab_size=0).check_token_ids([99])  # vector input: nothing to check
  with pytest.raises(ValueError, match="exceeds the learned PE table"):
    DecoderConfig(pe="learned", max_len=8).check_length(9)
  DecoderConfig(pe="rope", max_len=8).check_length(9)
