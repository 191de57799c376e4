"""The theory apps' flags parsed in process (``parse(flag_dict) -> Spec``): counting,
oversquashing, softmax_lemmas, scorecard and synthetic_collapse, bad values included.
``cli.parse_argv`` gives an app's flags in a fresh ``FlagValues``; parsing builds configs
only (no weights, no JAX program) and creates nothing under --out. What the user sees for a
bad flag (one line, exit 2) is tested once per app in tests/test_experiments.py (e2e)."""
import re

import numpy as np
import pytest
from absl import flags

from collapse_jax import cli
from experiments import counting, oversquashing, scorecard, softmax_lemmas, synthetic_collapse


def _parse(app, tmp_path, *args):
  return app.parse(cli.parse_argv(app.define_flags, [*args, f"--out={tmp_path / 'x'}"]))


def _refuses(app, tmp_path, args, msg):
  """A ValueError of ours or absl's own ``flags.Error`` naming the problem; nothing created."""
  with pytest.raises((ValueError, flags.Error), match=re.escape(msg)):
    _parse(app, tmp_path, *args)
  assert not (tmp_path / "x").exists()


def test_importing_an_app_defines_no_flags():
  for app in (counting, oversquashing, softmax_lemmas, scorecard, synthetic_collapse):
    assert "multipliers" not in flags.FLAGS and "figure" not in flags.FLAGS, app


# -- counting ---------------------------------------------------------------------------------

def test_counting_defaults_full_preset_and_explicit_flags(tmp_path):
  spec = _parse(counting, tmp_path)
  assert spec.multipliers == [2, 3, 4] and spec.dtypes == ["bfloat16", "float32"]
  assert spec.b10_dtypes == ["bfloat16", "float16"] and spec.N == 512 and spec.seed == 0
  c9, c10 = spec.cfg9, spec.cfg10
  assert (c9.num_layers, c9.d_model, c9.num_heads, c9.vocab_size, c9.pe, c9.causal) == (
      2, 32, 2, 2, "none", False)
  assert (c10.num_layers, c10.d_model, c10.num_heads, c10.vocab_size, c10.pe, c10.causal,
          c10.max_len) == (1, 16, 1, 3, "rope", True, 4096)
  assert spec.settings == {"seeds": [0], "heads": 2, "multipliers": [2, 3, 4],
                           "dtype": ["bfloat16", "float32"], "b10_n": 512,
                           "b10_dtype": ["bfloat16", "float16"], "full": False}
  full = _parse(counting, tmp_path, "--full")
  assert full.multipliers == [2, 3, 4, 5, 8] and full.N == 8192
  assert full.dtypes == ["bfloat16", "float16", "float32", "float64"]
  assert full.b10_dtypes == ["bfloat16", "float16", "float32"] and full.cfg10.max_len == 8192
  mixed = _parse(counting, tmp_path, "--full", "--b10_n=64", "--multipliers=3",
                 "--base=120", "--b10_pe=none")
  assert mixed.N == 64 and mixed.multipliers == [3] and mixed.settings["full"]
  assert mixed.dtypes == full.dtypes and mixed.cfg9.vocab_size == 3 and mixed.cfg10.pe == "none"
  assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("args,msg", [
    (["--b10_dtype=float32,nope"], "unknown precision 'nope'"),  # e2e case
    (["--dtype=bf16"], "unknown precision 'bf16'"),
    (["--dtype="], "--dtype is empty"),
    (["--seeds=0,1"], "--seeds takes one value"),
    (["--heads=2,4"], "--heads takes one value"),
    (["--heads=3"], "does not divide d_model"),
    (["--multipliers=2,x"], "--multipliers must be a comma list of integers"),
    (["--multipliers=0"], "--multipliers must be >= 1"),
    (["--base=1a"], "--base must be a non-empty string of the digits 0-9"),
    (["--base="], "--base must be a non-empty string"),
    (["--b10_n=1"], "--b10_n must be >= 2"),
    (["--confirm=-1"], "--confirm must be >= 0"),
    (["--b10_heads=3"], "does not divide d_model"),
    (["--b10_d_model=0"], "d_model must be >= 1"),
    (["--b10_pe=learned"], "b10_pe"),  # absl: not an enum value
    (["--b10_n=x"], "b10_n"),
])
def test_counting_refuses_bad_values(args, msg, tmp_path):
  _refuses(counting, tmp_path, args, msg)


# -- oversquashing ----------------------------------------------------------------------------

def test_oversquashing_defaults_full_preset_and_explicit_flags(tmp_path):
  spec = _parse(oversquashing, tmp_path)
  assert spec.dtype == "float64" and spec.seed == 0 and spec.n == 256
  assert spec.spectral_n == [8, 64, 512]
  c = spec.cfg
  assert (c.num_layers, c.d_model, c.num_heads, c.pe, c.mlp, c.vocab_size, c.causal,
          c.max_len) == (2, 32, 2, "rope", "gelu", 0, True, 4096)
  assert spec.settings == {"max_len": 256, "layers": 2, "seeds": [0], "spectral_n": [8, 64, 512]}
  full = _parse(oversquashing, tmp_path, "--full")
  assert full.n == 2048 and full.cfg.num_layers == 4 and full.spectral_n == [8, 64, 512, 4096]
  mixed = _parse(oversquashing, tmp_path, "--full", "--layers=1", "--spectral_n=4,8",
                 "--max_len=16", "--d_model=8")
  assert mixed.n == 16 and mixed.cfg.num_layers == 1 and mixed.spectral_n == [4, 8]
  assert mixed.settings["layers"] == 1 and mixed.cfg.d_model == 8
  assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("args,msg", [
    (["--seeds=0,1"], "--seeds takes one value"),  # e2e case
    (["--dtype=float32,bfloat16"], "--dtype takes one value"),
    (["--dtype=bf16"], "unknown precision 'bf16'"),
    (["--heads=2,4"], "--heads takes one value"),
    (["--heads=5"], "does not divide d_model"),
    (["--spectral_n=0,8"], "--spectral_n must be >= 1"),
    (["--spectral_n=a"], "--spectral_n must be a comma list of integers"),
    (["--max_len=0"], "--max_len must be >= 1"),
    (["--layers=0"], "num_layers must be >= 1"),
    (["--vjp_chunk=0"], "--vjp_chunk must be >= 1"),
    (["--spectral_max_L=-1"], "--spectral_max_L must be >= 0"),
    (["--mlp=swiglu"], "the analytic bound needs a Lipschitz MLP ('gelu')"),
    (["--pe=xpos"], "rope"),  # absl: not an enum value
    (["--tol=x"], "tol"),
])
def test_oversquashing_refuses_bad_values(args, msg, tmp_path):
  _refuses(oversquashing, tmp_path, args, msg)


# -- softmax_lemmas ---------------------------------------------------------------------------

def test_softmax_lemmas_defaults_full_preset_and_explicit_flags(tmp_path):
  spec = _parse(softmax_lemmas, tmp_path)
  assert spec.dtypes == ["float32", "bfloat16", "float16", "float8_e4m3fn", "float8_e5m2"]
  assert spec.seeds == [0, 1, 2, 3, 4]
  assert spec.settings == {"max_len": 10_000, "num_n": 13, "seeds": [0, 1, 2, 3, 4],
                           "dtype": spec.dtypes}
  assert spec.ns_b2[0] == 10 and spec.ns_b2[-1] == 10_000 and 1000 in spec.ns_b2
  assert spec.ns_b1[0] == 2 and all(n % 2 == 0 for n in spec.ns_b4)
  full = _parse(softmax_lemmas, tmp_path, "--full")
  assert full.settings["max_len"] == 100_000 and full.settings["num_n"] == 26
  assert full.ns_b2[-1] == 100_000
  mixed = _parse(softmax_lemmas, tmp_path, "--full", "--max_len=1000", "--dtype=bfloat16")
  assert mixed.settings["max_len"] == 1000 and mixed.settings["num_n"] == 26
  assert mixed.dtypes == ["bfloat16"] and mixed.ns_b1[-1] == 1000
  assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("args,msg", [
    (["--dtype=bf16"], "unknown precision 'bf16'"),  # e2e case
    (["--dtype=bfloat16,bfloat16"], "--dtype repeats a preset"),
    (["--seeds=0,0"], "--seeds repeats a value"),
    (["--seeds=-1"], "--seeds must be >= 0"),
    (["--max_len=5"], "--max_len=5 is below --min_n=10"),
    (["--max_len=1", "--min_n=1"], "--max_len=1 is below --min_n=1"),
    (["--min_n=0"], "--min_n must be >= 1"),
    (["--num_n=0"], "--num_n must be >= 1"),
    (["--k=x"], "--k"),  # absl: not an integer
])
def test_softmax_lemmas_refuses_bad_values(args, msg, tmp_path):
  _refuses(softmax_lemmas, tmp_path, args, msg)


# -- scorecard --------------------------------------------------------------------------------

def test_scorecard_defaults_and_full(tmp_path):
  """--full is passed to the checks (``scorecard.run_checks(names, full)``), which hold the sizes."""
  spec = _parse(scorecard, tmp_path)
  assert spec.names is None and spec.full is False
  spec = _parse(scorecard, tmp_path, "--full", "--only=b4,b6_b7")
  assert spec.names == {"b4", "b6_b7"} and spec.full is True
  assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("args,msg", [
    (["--only=b4,nope"], "unknown checks ['nope']"),  # e2e case
    (["--full=maybe"], "full"),  # absl: not a boolean
])
def test_scorecard_refuses_bad_values(args, msg, tmp_path):
  _refuses(scorecard, tmp_path, args, msg)


# -- synthetic_collapse -----------------------------------------------------------------------

def test_synthetic_collapse_defaults_and_figure_10(tmp_path):
  spec = _parse(synthetic_collapse, tmp_path)
  assert spec.dtypes == ["float32", "bfloat16", "float16", "float8_e4m3fn", "float8_e5m2"]
  assert spec.seeds == [0] and spec.pes == ["sinusoidal"] and spec.init_var == 1 / 64
  assert spec.lengths[0] == 2 and spec.lengths[-1] == 2048 and len(spec.lengths) <= 120
  assert spec.flags["copy"] == "vector" and spec.flags["plot"]
  spec = _parse(synthetic_collapse, tmp_path, "--figure=10", "--max_len=64",
                "--lengths=log:2:64:8", "--d_model=16")
  assert spec.pes == ["rope", "alibi", "learned", "sinusoidal", "none"] and spec.init_var == 1.0
  np.testing.assert_array_equal(spec.lengths, [2, 3, 5, 9, 14, 24, 39, 64])
  assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("args,msg", [
    (["--dtype=bf16"], "unknown precision 'bf16'"),
    (["--seeds=a"], "--seeds must be a comma list of integers"),
    (["--max_len=64", "--lengths=1:100"], "--lengths reaches n=100, beyond --max_len=64"),
    (["--max_len=0"], "--max_len must be >= 1"),
    (["--lengths=1:10:0"], "step must be >= 1"),
    (["--d_model=15"], "sinusoidal PE needs an even d_model"),
    (["--figure=10", "--d_model=15"], "RoPE needs an even head_dim"),
    (["--d_model=0"], "d_model must be >= 1"),
    (["--vocab=1"], "--vocab must be >= 2"),
    (["--figure=9"], "figure"),  # absl: not an enum value
    (["--copy=bad"], "copy"),
])
def test_synthetic_collapse_refuses_bad_values(args, msg, tmp_path):
  _refuses(synthetic_collapse, tmp_path, args, msg)
