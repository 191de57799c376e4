"""collapse_jax.checkpoints.hf: tiny random HF checkpoints of every family (Llama with and
without RoPE scaling, Mistral, Qwen2, Qwen3, Gemma 1/2/3) built and saved by transformers in
the test, loaded here and compared with transformers' own float32 forward; the allow-list
converters' refusals. Needs torch + transformers + safetensors for the forward checks."""
from __future__ import annotations

import numpy as np
import pytest

try:  # rootdir import (pytest's rootdir on sys.path) or package import
  from checkpoint_helpers import (_finish, _forward, needs_gguf, needs_torch_hf,
                                  write_hf_as_gguf)
  from tiny_hf import tiny_hf
except ImportError:
  from tests.checkpoint_helpers import (_finish, _forward, needs_gguf,  # noqa: F401
                                        needs_torch_hf, write_hf_as_gguf)
  from tests.tiny_hf import tiny_hf


def test_gemma3_config_rejects_what_it_does_not_handle():
  from collapse_jax.checkpoints.hf import CheckpointError, config_from_hf
  base = {"model_type": "gemma3_text", "hidden_size": 64, "num_attention_heads": 2,
          "num_key_value_heads": 1, "head_dim": 32, "intermediate_size": 96,
          "num_hidden_layers": 6, "vocab_size": 50, "sliding_window": 16}
  c = config_from_hf(base)  # transformers' defaults: 5 local layers then 1 global
  assert c.layer_windows == (16,) * 5 + (None,) and c.layer_rope_thetas == (1e4,) * 5 + (1e6,)
  assert c.qk_scale == 256 ** -0.5 and c.qk_norm and c.post_norms
  c2 = config_from_hf({**base, "rope_local_base_freq": 50.0, "rope_theta": 7e5,
                       "rope_parameters": {"sliding_attention": {"rope_type": "default"}}})
  assert c2.layer_rope_thetas == (50.0,) * 5 + (7e5,)  # transformers' fallbacks
  for bad, msg in (({"attn_logit_softcapping": 50.0}, "softcapping"),
                   ({"final_logit_softcapping": 30.0}, "softcapping"),
                   ({"use_bidirectional_attention": True}, "bidirectional"),
                   ({"some_new_knob": 1}, r"\['some_new_knob'\] are neither handled"),
                   ({"rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 8.0},
                                         "sliding_attention": {}}}, "RoPE scaling"),
                   ({"rope_parameters": {"full_attention": {"rope_type": "default"},
                                         "sliding_attention": {"rope_type": "default"}},
                     "rope_scaling": {"rope_type": "linear", "factor": 8.0}}, "RoPE scaling"),
                   ({"layer_types": ["full_attention"] * 5}, "layer_types")):
    with pytest.raises(CheckpointError, match=msg):
      config_from_hf({**base, **bad})


@needs_torch_hf
@pytest.mark.parametrize("kind", ["llama", "llama3", "llama_linear", "mistral", "qwen2", "qwen3",
                                  "gemma", "gemma2", "gemma3"])
def test_hf_checkpoint_matches_transformers(kind, tmp_path):
  """Logits, every layer's residual and y against transformers 5.23 in float32, on 17
  tokens (longer than the windows of 5), with random norm weights."""
  import torch
  from collapse_jax.checkpoints.hf import load_hf_checkpoint
  m = tiny_hf(kind, tmp_path)
  cfg, params = load_hf_checkpoint(tmp_path)
  assert cfg.rope_layout == "half" and cfg.dh == (
      12 if kind in ("llama", "llama3", "llama_linear", "mistral", "qwen2") else 16)
  if kind == "gemma2":
    assert (cfg.attn_softcap, cfg.final_softcap, cfg.layer_windows, cfg.post_norms,
            cfg.qk_norm, cfg.qk_scale) == (0.5, 1.0, (5, None, 5), True, False, 24 ** -0.5)
  elif kind == "llama3":
    assert (cfg.rope_theta, cfg.rope_scaling) == (5e5, ("llama3", 8.0, 1.0, 4.0, 64.0))
  elif kind == "llama_linear":
    assert (cfg.rope_theta, cfg.rope_scaling) == (100.0, ("linear", 4.0))
  elif kind == "mistral":
    assert (cfg.sliding_window, cfg.layer_windows, cfg.qk_norm, cfg.rope_theta) == \
        (5, (), False, 500.0)
  elif kind == "qwen2":
    assert (cfg.qkv_bias, cfg.qk_norm, cfg.layer_windows, cfg.tie_embeddings) == \
        (True, False, (None, 5), False)
    assert np.abs(params["layer_0"]["attn"]["k_bias"]).max() > 0.1
  elif kind == "qwen3":
    assert (cfg.qk_norm, cfg.norm, cfg.layer_windows, cfg.tie_embeddings) == \
        (True, "rmsnorm", (None, 5), True)
  elif kind == "gemma3":
    assert (cfg.qk_norm, cfg.post_norms, cfg.layer_windows, cfg.layer_rope_thetas,
            cfg.qk_scale, cfg.kv_heads) == (True, True, (5, 5, None), (100.0, 100.0, 5e4),
                                            24 ** -0.5, 1)
  elif kind == "gemma":
    assert (cfg.norm, cfg.mlp, cfg.embed_scale, cfg.tie_embeddings) == \
        ("gemma_rmsnorm", "geglu", True, True)
  else:
    assert (cfg.norm, cfg.mlp, cfg.tie_embeddings, cfg.rope_theta) == \
        ("rmsnorm", "swiglu", False, 5000.0)
  ids = np.random.default_rng(0).integers(0, 101, size=(2, 17))  # 17 > the window of 5
  cap = {}
  m.model.norm.register_forward_hook(lambda mod, i, o: cap.update(pre=i[0], post=o))
  with torch.no_grad():
    ref = m(torch.tensor(ids), output_hidden_states=True)
  out = _forward(cfg, params, ids)
  hs = np.stack([h.numpy() for h in ref.hidden_states[:cfg.num_layers]] + [cap["pre"].numpy()])
  np.testing.assert_allclose(np.asarray(out["residual"]), hs, atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(out["y"]), cap["post"].numpy(), atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(out["logits"]), ref.logits.numpy(), atol=2e-5, rtol=1e-5)


@pytest.mark.slow
@needs_torch_hf
def test_hf_bfloat16_safetensors(tmp_path):
  """bf16 checkpoints (Gemma 7B ships bf16): numpy has no bfloat16, read via ml_dtypes."""
  from collapse_jax.checkpoints.hf import load_hf_checkpoint
  m = tiny_hf("gemma", tmp_path, dtype="bfloat16")
  _, params = load_hf_checkpoint(tmp_path)
  ref = m.model.layers[1].self_attn.q_proj.weight.detach().numpy()  # bf16 values, as f32
  assert params["layer_1"]["attn"]["q"].dtype == np.float32
  np.testing.assert_array_equal(params["layer_1"]["attn"]["q"].reshape(48, -1), ref.T)


def test_hf_missing_directory_is_a_clear_error(tmp_path):
  from collapse_jax.checkpoints.hf import CheckpointError, load_hf_checkpoint
  with pytest.raises(CheckpointError, match="never downloads"):
    load_hf_checkpoint(tmp_path / "nope")


def test_hf_config_mapping():
  from collapse_jax.checkpoints.hf import CheckpointError, config_from_hf
  gemma7b = {"model_type": "gemma", "hidden_size": 3072, "num_attention_heads": 16,
             "num_key_value_heads": 16, "head_dim": 256, "intermediate_size": 24576,
             "num_hidden_layers": 28, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
             "vocab_size": 256000, "max_position_embeddings": 8192,
             "hidden_activation": "gelu_pytorch_tanh"}
  c = config_from_hf(gemma7b)
  assert (c.dh, c.qk_scale, c.embed_scale, c.norm, c.mlp, c.tie_embeddings) == \
      (256, 1 / 16, True, "gemma_rmsnorm", "geglu", True)
  c5 = config_from_hf({**gemma7b, "rope_theta": None,
                       "rope_parameters": {"rope_type": "default", "rope_theta": 500.0}})
  assert c5.rope_theta == 500.0
  with pytest.raises(CheckpointError, match="'gemma4' is not supported; supported: llama"):
    config_from_hf({**gemma7b, "model_type": "gemma4"})
  with pytest.raises(CheckpointError, match=r"gemma config keys \['sliding_window'\] are neither"):
    config_from_hf({**gemma7b, "sliding_window": 4096})  # an allow-list, not a block-list
  llama = {**{k: v for k, v in gemma7b.items() if k != "hidden_activation"},
           "model_type": "llama", "hidden_act": "silu"}
  for rope, msg in (({"rope_type": "llama3", "factor": 8.0}, r"needs \['high_freq_factor'"),
                    ({"rope_type": "yarn", "factor": 4.0}, "rope_type 'yarn' is not supported"),
                    ({"type": "dynamic", "factor": 2.0}, "rope_type 'dynamic'"),
                    ({"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": 0.5},
                     r"keys \['partial_rotary_factor'\]")):
    with pytest.raises(CheckpointError, match=msg):
      config_from_hf({**llama, "rope_scaling": rope})
  old = config_from_hf({**llama, "rope_scaling": {"type": "linear", "factor": 4.0}})
  assert (old.rope_theta, old.rope_scaling) == (10000.0, ("linear", 4.0))
  new = config_from_hf({**llama, "rope_theta": None, "rope_parameters": {
      "rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0,
      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}})
  assert (new.rope_theta, new.rope_scaling) == (5e5, ("llama3", 8.0, 1.0, 4.0, 8192.0))


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2",
                                        "gemma3_text"])
def test_every_family_converter_is_an_allow_list(model_type):
  """A key no family handles or ignores is refused by name; the keys transformers 5.23 itself
  writes for each family convert (test_hf_checkpoint_matches_transformers)."""
  from collapse_jax.checkpoints.hf import CheckpointError, HANDLED, IGNORED, config_from_hf
  base = {"model_type": model_type, "hidden_size": 64, "num_attention_heads": 2,
          "num_key_value_heads": 1, "head_dim": 32, "intermediate_size": 96,
          "num_hidden_layers": 2, "vocab_size": 50,
          **({"sliding_window": 16} if model_type.startswith("gemma") and model_type != "gemma"
             else {})}
  assert config_from_hf(base).num_layers == 2
  assert not HANDLED[model_type] & IGNORED
  with pytest.raises(CheckpointError, match=rf"{model_type} config keys \['rope_wobble'\]"):
    config_from_hf({**base, "rope_wobble": 1.0})


def test_mistral_and_qwen3_windows_from_config():
  from collapse_jax.checkpoints.hf import CheckpointError, config_from_hf
  base = {"hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 96,
          "num_hidden_layers": 3, "vocab_size": 50}
  assert config_from_hf({**base, "model_type": "mistral", "sliding_window": 7}).window(2) == 7
  assert config_from_hf({**base, "model_type": "mistral", "sliding_window": None}).window(0) is None
  q = config_from_hf({**base, "model_type": "qwen3", "sliding_window": 9, "layer_types":
                      ["full_attention", "sliding_attention", "sliding_attention"]})
  assert q.layer_windows == (None, 9, 9) and q.qk_norm and q.norm == "rmsnorm"
  assert config_from_hf({**base, "model_type": "qwen3", "sliding_window": None}).layer_windows == ()
  with pytest.raises(CheckpointError, match="need sliding_window"):
    config_from_hf({**base, "model_type": "qwen3", "layer_types": ["sliding_attention"] * 3})
  with pytest.raises(CheckpointError, match="hidden_act 'gelu'"):
    config_from_hf({**base, "model_type": "qwen3", "hidden_act": "gelu"})


# GGUF files of the families llama.cpp's metadata describes: (tiny_hf kind, GGUF architecture,
# config overrides). GGUF carries no Qwen2/3 window and no Gemma 2 query_pre_attn_scalar
# (llama.cpp uses head_dim below 27B), so the HF models are built to match what it can say.
GGUF_KINDS = [
    ("llama_linear", "llama", {}),
    ("llama3", "llama", {}),
    ("qwen2", "qwen2", {"use_sliding_window": False, "sliding_window": None,
                        "layer_types": ["full_attention"] * 2}),
    ("qwen3", "qwen3", {"use_sliding_window": False, "sliding_window": None,
                        "layer_types": ["full_attention"] * 2}),
    ("gemma2", "gemma2", {"query_pre_attn_scalar": 16}),
]


@needs_gguf
@needs_torch_hf
@pytest.mark.parametrize("kind,arch,overrides", GGUF_KINDS, ids=[k[0] for k in GGUF_KINDS])
def test_gguf_of_each_family_matches_transformers(kind, arch, overrides, tmp_path):
  """A tiny transformers model written as a GGUF (llama.cpp's names, metadata and layouts:
  Q/K permuted for llama only, Gemma norms as 1 + w), loaded by ``load_gguf``: float32
  logits and every layer's residual match transformers' own forward on 17 tokens."""
  import torch
  from collapse_jax.checkpoints.gguf import load_gguf
  m = tiny_hf(kind, tmp_path / "hf", **overrides)
  write_hf_as_gguf(tmp_path / "m.gguf", arch, m)
  g = load_gguf(tmp_path / "m.gguf")
  cfg, params = g.config, g.params
  if arch == "gemma2":
    assert (cfg.attn_softcap, cfg.final_softcap, cfg.layer_windows, cfg.qk_scale) == \
        (0.5, 1.0, (5, None, 5), 16 ** -0.5)
  elif kind == "llama3":  # the rope_freqs tensor: kept, divided, blended (all three bands)
    f = cfg.rope_scaling[1:]
    assert cfg.rope_scaling[0] == "factors" and f[0] == 1.0 and f[-1] == 8.0
    assert any(1.0 < v < 8.0 for v in f), f
  elif arch == "llama":
    assert cfg.rope_scaling == ("linear", 4.0)
  elif arch == "qwen2":
    assert cfg.qkv_bias and np.abs(params["layer_0"]["attn"]["q_bias"]).max() > 0.1
  else:
    assert cfg.qk_norm
  ids = np.random.default_rng(0).integers(0, 101, size=(2, 17))
  with torch.no_grad():
    ref = m(torch.tensor(ids), output_hidden_states=True)
  out = _forward(cfg, params, ids)
  hs = np.stack([h.numpy() for h in ref.hidden_states[:cfg.num_layers]])
  np.testing.assert_allclose(np.asarray(out["residual"])[:cfg.num_layers], hs, atol=2e-5,
                             rtol=1e-5)
  np.testing.assert_allclose(np.asarray(out["logits"]), ref.logits.numpy(), atol=2e-5, rtol=1e-5)


@needs_gguf
@needs_torch_hf
def test_gguf_refuses_what_it_cannot_read(tmp_path):
  """An unknown metadata key of a supported architecture, an unsupported architecture and
  Llama 3's rope_freqs tensor are refused in one line, by name."""
  import gguf
  from collapse_jax.checkpoints.gguf import CheckpointError, load_gguf
  m = tiny_hf("qwen3", tmp_path / "hf")
  path = tmp_path / "m.gguf"
  write_hf_as_gguf(path, "qwen3", m)
  r = gguf.GGUFReader(str(path))
  w = gguf.GGUFWriter(str(tmp_path / "bad.gguf"), "qwen3")
  for k, f in r.fields.items():  # copy, plus one key the converter does not know
    if k.startswith("qwen3.") and f.types[0] == gguf.GGUFValueType.UINT32:
      w.add_uint32(k, int(f.parts[f.data[0]][0]))
    elif k.startswith("qwen3.") and f.types[0] == gguf.GGUFValueType.FLOAT32:
      w.add_float32(k, float(f.parts[f.data[0]][0]))
  w.add_float32("qwen3.rope.scaling.yarn_log_multiplier", 0.1)
  for t in r.tensors:
    w.add_tensor(t.name, np.asarray(t.data).reshape([int(x) for x in reversed(t.shape)]))
  _finish(w)
  with pytest.raises(CheckpointError, match=r"yarn_log_multiplier'\] is neither handled"):
    load_gguf(tmp_path / "bad.gguf")
  w = gguf.GGUFWriter(str(tmp_path / "phi.gguf"), "phi3")
  _finish(w)
  with pytest.raises(CheckpointError, match="architecture 'phi3' is not supported"):
    load_gguf(tmp_path / "phi.gguf")
