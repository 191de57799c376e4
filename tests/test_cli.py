"""The flag vocabulary (collapse_jax/cli.py): parsers and one-line errors."""
import numpy as np
import pytest
from absl import flags

from collapse_jax import cli


def test_policies_parse_lists_and_all():
  assert [p.name for p in cli.policies("float32, bfloat16")] == ["float32", "bfloat16"]
  assert len(cli.policies("all")) == 7
  scaled = cli.policies("bfloat16,float8_e5m2", fp8_scaling=True)
  assert [p.name for p in scaled] == ["bfloat16", "float8_e5m2_scaled"]
  with pytest.raises(ValueError, match="valid: float64"):
    cli.policies("bf16")
  with pytest.raises(ValueError, match="fp8 presets only"):
    cli.policies("bfloat16", fp8_scaling=True)
  with pytest.raises(ValueError, match="empty"):
    cli.policies(" , ")
  with pytest.raises(ValueError, match="repeats a preset"):
    cli.policies("bfloat16,float32,bfloat16")


def test_int_lists_and_lengths():
  assert cli.int_list(["0", "2"], "seeds") == [0, 2] and cli.int_list("4,1", "heads") == [4, 1]
  with pytest.raises(ValueError, match="--seeds must be a comma list of integers"):
    cli.int_list(["a"], "seeds")
  with pytest.raises(ValueError, match=r"--seeds repeats a value: \[0, 0\]"):
    cli.int_list("0,0", "seeds")
  with pytest.raises(ValueError, match="--seeds must be >= 0, got -1"):
    cli.int_list("0,-1", "seeds")
  with pytest.raises(ValueError, match="--heads must be >= 1"):
    cli.int_list("0", "heads")
  assert cli.int_list("-3,2", "at", minimum=-5) == [-3, 2]
  np.testing.assert_array_equal(cli.lengths(None, 4), [1, 2, 3, 4])
  np.testing.assert_array_equal(cli.lengths("2:8:3", 8), [2, 5, 8])
  with pytest.raises(ValueError, match="beyond --max_len=8 .learned"):
    cli.lengths("1:9", 8, hint=" (learned")


def test_define_uses_the_vocabulary_and_usage_errors_are_one_line():
  if "max_len" not in flags.FLAGS:
    cli.define(max_len=77, seeds=["0", "1"], pe="alibi")
  assert flags.FLAGS["max_len"].default == 77 and flags.FLAGS["seeds"].default == ["0", "1"]
  assert flags.FLAGS["max_len"].help == cli.VOCABULARY["max_len"][1]
  with pytest.raises(flags.IllegalFlagValueError):
    flags.FLAGS["pe"].parse("xpos")  # enums take their choices from the library
  with pytest.raises(KeyError, match="not in the flag vocabulary"):
    cli.define(precisions="bfloat16")
def test_usage_errors_print_one_line_and_exit_2(capsys):
  with pytest.raises(SystemExit) as e:
    with cli.usage_errors():
      cli.policies("x")
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("error: unknown precision 'x'") and err.count("\n") == 1


def test_one_refuses_several_values():
  assert cli.one([3], "seeds") == 3
  with pytest.raises(ValueError, match="--seeds takes one value in this experiment"):
    cli.one([0, 1], "seeds")


def test_window_modes():
  assert cli.window_modes("native,global,512") == ["native", "global", "512"]
  assert cli.window_modes(["native"]) == ["native"]
  with pytest.raises(ValueError, match="--windows repeats a mode"):
    cli.window_modes("native,native")
  with pytest.raises(ValueError, match="native, global or a window size >= 1, got '0'"):
    cli.window_modes("0")
  with pytest.raises(ValueError, match="got 'local'"):
    cli.window_modes("native,local")
  with pytest.raises(ValueError, match="--windows is empty"):
    cli.window_modes("")


def test_decoder_config_maps_the_model_flags_and_overrides_win():
  cfg = cli.decoder_config({"layers": 3, "d_model": 32, "heads": ["4", "2"], "pe": "alibi",
                            "norm": "rmsnorm", "mlp": "swiglu", "vocab": 16, "out": "x"},
                           max_len=9)
  assert (cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.pe, cfg.norm, cfg.mlp,
          cfg.vocab_size, cfg.max_len) == (3, 32, 4, "alibi", "rmsnorm", "swiglu", 16, 9)
  assert cli.decoder_config({"layers": 3}, num_layers=1).num_layers == 1
  assert cli.decoder_config({"pe": None}).pe == cli.config_lib.DecoderConfig().pe
  with pytest.raises(ValueError, match="divide"):
    cli.decoder_config({"d_model": 32, "heads": ["3"]})


def test_sized_takes_the_preset_unless_a_flag_is_given():
  presets = {"small": {"n": 8, "dtype": "bfloat16"}, "full": {"n": 4096, "dtype": "all"}}
  assert cli.sized({"full": False, "n": None, "dtype": None}, presets) == presets["small"]
  assert cli.sized({"full": True, "n": None, "dtype": None}, presets) == presets["full"]
  assert cli.sized({"full": True, "n": 5}, presets) == {"n": 5, "dtype": "all"}
  with pytest.raises(KeyError, match="same keys"):
    cli.sized({}, {"small": {"n": 1}, "full": {}})


def test_parse_argv_defines_into_a_fresh_flag_set_and_app_flags_keep_the_app_s_own():
  def define_flags(fv):
    cli.define(fv, dtype="bfloat16", max_len=8, out=None, **cli.JOB)
    flags.DEFINE_integer("own", 3, "an app's own flag", flag_values=fv)
  fl = cli.parse_argv(define_flags, ["--dtype=float32", "--own=4"])
  assert fl["dtype"] == "float32" and fl["own"] == 4 and fl["max_len"] == 8
  assert "own" not in flags.FLAGS  # nothing leaked into absl's global flags
  assert cli.job_spec(fl) == {"dtype": "float32", "max_len": 8, "own": 4}
  with pytest.raises(flags.Error):
    cli.parse_argv(define_flags, ["--own=x"])
  # app_flags: the vocabulary's and the calling app's flags, never absl's own
  if "max_len" not in flags.FLAGS:
    cli.define(max_len=77)
  got = cli.app_flags(__file__)
  assert "max_len" in got and "logtostderr" not in got and "verbosity" not in got
