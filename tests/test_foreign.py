"""collapse_jax.foreign: the collapse curve of a model given as apply_fn(params, tokens) ->
states. Checked against the suite's own engines on its own decoder wrapped as an apply_fn
(bit for bit: the same rows of the same passes), and through examples/own_model.py, a model
written in plain JAX."""
import importlib.util
import pathlib

import jax
import numpy as np
import pytest

from collapse_jax import foreign, model, pairs, precision, sweep
from collapse_jax.config import DecoderConfig

CFG = DecoderConfig(num_layers=2, d_model=32, num_heads=2, vocab_size=8)
NS = np.arange(5, 24)


@pytest.mark.bitwise
@pytest.mark.parametrize("dtype", ["float32", pytest.param("bfloat16", marks=pytest.mark.slow)])
def test_the_suites_own_decoder_as_an_apply_fn_gives_the_engines_record(dtype):
  pol = precision.get_policy(dtype)
  params = pol.cast_params(model.init_params(CFG, jax.random.key(0)))
  apply_fn = jax.jit(lambda p, t: model.forward(CFG, pol, p, t)["y"])
  ps = pairs.make_family("prefix_repeat", int(NS[-1]), seed=0, vocab_size=8, prefix_len=4)
  rec = sweep.run_grid([sweep.Model(CFG, [params], {})], [pol], {"p": [ps]}, NS, [0],
                       engine="causal", log=lambda *a: None)[0]
  got = foreign.collapse_curve(apply_fn, params, ps, NS)
  assert got["engine"] == "causal" and got["collapse_onset"] == rec["collapse_onset"]
  for key in ("linf", "max_ulp", "bitwise_equal", "absmax"):
    np.testing.assert_array_equal(got[key], rec[key], err_msg=key)
  some = slice(0, None, 18)  # exact-length calls compile per length: the first and last n
  got = foreign.collapse_curve(apply_fn, params, ps, NS[some], causal=False)
  assert got["engine"] == "exact"
  for key in ("linf", "max_ulp", "bitwise_equal", "absmax"):
    np.testing.assert_array_equal(got[key], rec[key][some], err_msg=f"{key}, exact")


def test_refusals():
  ps = pairs.make_family("prefix_repeat", 20, seed=0, vocab_size=8, prefix_len=4)
  flat = lambda p, t: t.astype(np.float32)  # [B, N]: no feature axis
  with pytest.raises(ValueError, match="states \\[B, N, D\\]"):
    foreign.collapse_curve(flat, None, ps, np.arange(5, 9))
  vec = pairs.make_family("prefix_repeat", 20, seed=0, vocab_size=8, prefix_len=4, copy="vector")
  with pytest.raises(ValueError, match="copy='vector'"):
    foreign.collapse_curve(flat, None, vec, np.arange(5, 9))
  with pytest.raises(ValueError, match="needs n >= 5"):
    foreign.collapse_curve(flat, None, ps, np.arange(2, 9))


def test_the_example_model_collapses_in_bfloat16_and_not_in_float32():
  """examples/own_model.py (a plain-JAX model) at n <= 2048: bf16 has bitwise-equal n,
  float32 none (measured: bf16 8 of 2040 equal from n = 1692; f32 min linf 6e-6)."""
  path = pathlib.Path(__file__).parent.parent / "examples" / "own_model.py"
  spec = importlib.util.spec_from_file_location("own_model", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  out = mod.main(2048)
  assert not out["float32"]["bitwise_equal"].any() and out["float32"]["linf"].min() > 0
  assert out["bfloat16"]["bitwise_equal"].any() and out["bfloat16"]["collapse_onset"] > 9
