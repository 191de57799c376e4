"""Local Hugging Face checkpoints (config.json + *.safetensors) -> our decoder's params.

Llama, Mistral, Qwen2, Qwen3, Gemma (v1), Gemma 2 and Gemma 3 (text: ``gemma3_text``)
families. Everything is read from disk with the ``safetensors`` numpy
API; nothing here touches the network. Weights are returned as float32 numpy arrays in the
layout documented in ``collapse_jax.model`` (cast them with ``policy.cast_params``).

HF stores every projection as ``[out, in]`` (torch ``nn.Linear``); our kernels are
``[in, out...]``:

    q_proj [H*Dh, D]  -> attn/q [D, H, Dh]        k_proj/v_proj [KV*Dh, D] -> [D, KV, Dh]
    o_proj [D, H*Dh]  -> attn/o [H, Dh, D]        up/gate_proj [F, D] -> [D, F]
    down_proj [D, F]  -> mlp/down [F, D]          lm_head [V, D] -> lm_head/kernel [D, V]

HF's Q/K rows are in the ``rotate_half`` RoPE layout, so configs use ``rope_layout='half'``.

Gemma: embeddings scaled by sqrt(d_model) rounded at the policy's ``embed_scale`` point
(``embed_scale``), (1+w) RMSNorm (``norm='gemma_rmsnorm'``, HF stores w, not 1+w), GeGLU with
tanh-GELU, head_dim from config.json (256 for Gemma 7B), tied embeddings.

Gemma 3 adds, as decoder options: per-head q/k RMSNorms (``qk_norm``; ``self_attn.q_norm``,
``k_norm``), norms after attention and after the MLP (``post_norms``; HF's
``post_attention_layernorm`` is the post-ATTENTION norm here, ``pre_feedforward_layernorm``
is the MLP's input norm, ``post_feedforward_layernorm`` the post-MLP norm), ``layer_types``
-> per-layer windows (``layer_windows``), ``rope_parameters`` per layer type -> per-layer RoPE
bases (``layer_rope_thetas``), and ``query_pre_attn_scalar`` -> ``query_scale``. Its config
converter, like every family's, handles or explicitly ignores every config.json key
(:data:`HANDLED`, :data:`IGNORED`) and rejects the rest: an unknown key could change the model.

Mistral: Llama with one sliding window on every layer (``sliding_window``; keys j with
i - j < W, as transformers' mask). Qwen3: Llama with per-head q/k RMSNorms (``qk_norm``; plain
w, not Gemma's 1 + w) and windows where ``layer_types`` says sliding_attention. Qwen2: Qwen3's
windows, no q/k norms, and biases on the q/k/v projections (``qkv_bias``; o has none). Gemma 2:
Gemma 3's four norms, query scale and alternating windows (sliding on even layers), no q/k
norms, one RoPE base, and tanh softcapping of attention scores and final logits
(``attn_softcap``, ``final_softcap``: rounding points 'attn_softcap', 'logit_softcap'). RoPE: plain, 'linear' and Llama 3's
'llama3' frequency scaling (``rope_scaling``, every family but Gemma 3); other rope_types are
refused.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path
from typing import Mapping

import jax
import numpy as np

from collapse_jax.config import DecoderConfig

# Every family's converter is an allow-list: each config.json key is handled (HANDLED), known
# not to change the forward pass (IGNORED: bookkeeping, training, generation and caching
# settings), or refused in one line naming it: an unknown key could change the model.
IGNORED = frozenset({
    "transformers_version", "architectures", "output_hidden_states", "output_attentions",
    "return_dict", "dtype", "torch_dtype", "chunk_size_feed_forward", "is_encoder_decoder",
    "id2label", "label2id", "problem_type", "initializer_range", "use_cache", "pad_token_id",
    "eos_token_id", "bos_token_id", "attention_dropout", "_name_or_path", "model_type",
    "cache_implementation",
    "pretraining_tp"})  # Llama: transformers 5 no longer reads it in the forward pass
_BASE = frozenset({
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act",
    "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings", "rope_parameters",
    "rope_theta", "rope_scaling", "attention_bias", "mlp_bias"})
HANDLED = {
    "llama": _BASE,
    "mistral": _BASE | {"sliding_window"},
    "qwen2": _BASE | {"sliding_window", "use_sliding_window", "max_window_layers",
                      "layer_types"},
    "qwen3": _BASE | {"sliding_window", "use_sliding_window", "max_window_layers",
                      "layer_types"},
    "gemma": _BASE | {"hidden_activation", "use_bidirectional_attention"},
    "gemma2": _BASE | {
        "hidden_activation", "query_pre_attn_scalar", "sliding_window", "layer_types",
        "final_logit_softcapping", "attn_logit_softcapping", "use_bidirectional_attention"},
    "gemma3_text": _BASE | {
        "hidden_activation", "query_pre_attn_scalar", "sliding_window", "layer_types",
        "final_logit_softcapping", "attn_logit_softcapping", "use_bidirectional_attention",
        "rope_local_base_freq", "sliding_window_pattern", "_sliding_window_pattern"},
}
SUPPORTED_MODEL_TYPES = tuple(HANDLED)
# Families transformers has that the decoder does not (yet): what each lacks.
NOT_YET: dict[str, str] = {}


class CheckpointError(ValueError):
  """A checkpoint is missing, incomplete or uses a feature the decoder does not have."""


# The keys of a rope_parameters / rope_scaling dict, by rope_type: what each reads.
ROPE_KEYS = {"default": {"rope_type", "type", "rope_theta"},
             "linear": {"rope_type", "type", "rope_theta", "factor"},
             "llama3": {"rope_type", "type", "rope_theta", "factor", "low_freq_factor",
                        "high_freq_factor", "original_max_position_embeddings"}}


def _rope(cfg: Mapping) -> tuple[float, tuple]:
  """(rope_theta, ``DecoderConfig.rope_scaling``) from config.json: transformers < 5 writes
  ``rope_theta`` and ``rope_scaling``, >= 5 one ``rope_parameters`` dict. 'default',
  'linear' and 'llama3' are read; another rope_type (dynamic, yarn, longrope, ...) or a key
  its type does not read (e.g. partial_rotary_factor) is refused by name."""
  rp = dict(cfg.get("rope_parameters") or {})
  rp.update(cfg.get("rope_scaling") or {})
  kind = rp.get("rope_type", rp.get("type", "default"))
  if kind not in ROPE_KEYS:
    raise CheckpointError(f"RoPE scaling rope_type {kind!r} is not supported by the decoder "
                          f"(supported: {', '.join(ROPE_KEYS)})")
  if extra := sorted(set(rp) - ROPE_KEYS[kind]):
    raise CheckpointError(f"RoPE ({kind}) keys {extra} are not supported by the decoder")
  if missing := sorted(ROPE_KEYS[kind] - {"rope_type", "type", "rope_theta"} - set(rp)):
    raise CheckpointError(f"RoPE ({kind}) needs {missing} in its rope parameters")
  theta = float(rp.get("rope_theta", cfg.get("rope_theta", 10000.0)))
  if kind == "default":
    return theta, ()
  if kind == "linear":
    return theta, ("linear", float(rp["factor"]))
  return theta, ("llama3", float(rp["factor"]), float(rp["low_freq_factor"]),
                 float(rp["high_freq_factor"]), float(rp["original_max_position_embeddings"]))


def _layer_windows(cfg: Mapping, num_layers: int, window) -> tuple:
  """Per-layer windows from ``layer_types`` (sliding_attention -> ``window``, full_attention
  -> None); () when every layer is full."""
  types = list(cfg.get("layer_types") or ["full_attention"] * num_layers)
  if len(types) != num_layers or set(types) - {"sliding_attention", "full_attention"}:
    raise CheckpointError(f"layer_types {types} is not {num_layers} of "
                          "sliding_attention/full_attention")
  if "sliding_attention" not in types:
    return ()
  if window is None:
    raise CheckpointError("sliding_attention layers need sliding_window")
  return tuple(int(window) if t == "sliding_attention" else None for t in types)


def config_from_hf(cfg: Mapping) -> DecoderConfig:
  """DecoderConfig from a parsed HF config.json: Llama, Mistral, Qwen2/3, Gemma 1/2/3
  text. Refuses (one line) another model_type and any key its family neither handles nor
  ignores (:data:`HANDLED`, :data:`IGNORED`)."""
  mt = cfg.get("model_type")
  if mt not in HANDLED:
    lacks = f" (the decoder has no {NOT_YET[mt]} yet)" if mt in NOT_YET else ""
    raise CheckpointError(f"model_type {mt!r} is not supported{lacks}; supported: "
                          f"{', '.join(SUPPORTED_MODEL_TYPES)}")
  unknown = sorted(set(cfg) - IGNORED - HANDLED[mt])
  if unknown:
    raise CheckpointError(f"{mt} config keys {unknown} are neither handled nor known to be "
                          "irrelevant to the forward pass")
  for flag in ("attention_bias", "mlp_bias"):
    if cfg.get(flag):
      raise CheckpointError(f"{flag}=True is not supported (the decoder has no projection biases)")
  d, h = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
  head_dim = cfg.get("head_dim") or d // h
  common = dict(
      num_layers=int(cfg["num_hidden_layers"]), d_model=d, num_heads=h,
      num_kv_heads=int(cfg.get("num_key_value_heads") or h), head_dim=int(head_dim),
      mlp_dim=int(cfg["intermediate_size"]), norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
      pe="rope", rope_layout="half",
      max_len=int(cfg.get("max_position_embeddings") or 4096), causal=True,
      vocab_size=int(cfg["vocab_size"]), init_var=0.02 ** 2)
  if mt == "gemma3_text":
    return _gemma3(cfg, dict(common, rope_theta=10000.0))  # its RoPE: per layer type, below
  common["rope_theta"], common["rope_scaling"] = _rope(cfg)
  if cfg.get("use_bidirectional_attention"):
    raise CheckpointError("use_bidirectional_attention=True is not supported (the decoders "
                          "here are causal)")
  if mt in ("llama", "mistral", "qwen2", "qwen3"):
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
      raise CheckpointError(f"{mt} hidden_act {act!r} is not supported (only silu -> SwiGLU)")
    windows = {}
    if mt == "mistral" and cfg.get("sliding_window") is not None:
      windows = {"sliding_window": int(cfg["sliding_window"])}
    elif mt in ("qwen2", "qwen3"):  # transformers derives layer_types from use_sliding_window
      windows = {"layer_windows": _layer_windows(cfg, common["num_layers"],
                                                 cfg.get("sliding_window"))}
    return DecoderConfig(mlp="swiglu", norm="rmsnorm", embed_scale=False, qk_norm=mt == "qwen3",
                         qkv_bias=mt == "qwen2", **windows, tie_embeddings=bool(cfg.get("tie_word_embeddings", False)), **common)
  act = cfg.get("hidden_activation") or cfg.get("hidden_act") or "gelu_pytorch_tanh"
  if act not in ("gelu_pytorch_tanh", "gelu"):
    # HF Gemma maps legacy hidden_act='gelu' to the tanh approximation too (see GemmaMLP).
    raise CheckpointError(f"Gemma activation {act!r} is not supported (only tanh-GELU)")
  if mt == "gemma2":  # Gemma 3's norms and windows without q/k norms, plus softcapping
    L = common["num_layers"]
    types = cfg.get("layer_types") or [
        "sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(L)]
    cap = lambda key: None if cfg.get(key) is None else float(cfg[key])
    return DecoderConfig(
        mlp="geglu", norm="gemma_rmsnorm", embed_scale=True, post_norms=True,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        query_scale=float(cfg.get("query_pre_attn_scalar", 256)) ** -0.5,
        layer_windows=_layer_windows({"layer_types": types}, L, cfg.get("sliding_window"))
        or (None,) * L, attn_softcap=cap("attn_logit_softcapping"),
        final_softcap=cap("final_logit_softcapping"), **common)
  return DecoderConfig(mlp="geglu", norm="gemma_rmsnorm", embed_scale=True,
                       tie_embeddings=bool(cfg.get("tie_word_embeddings", True)), **common)


def _gemma3(cfg: Mapping, common: dict) -> DecoderConfig:
  """Gemma 3 (text) from its config.json (transformers >= 4.50 or 5.x spelling)."""
  for key in ("final_logit_softcapping", "attn_logit_softcapping"):
    if cfg.get(key) is not None:
      raise CheckpointError(f"{key}={cfg[key]} is not supported (the decoder has no softcapping)")
  if cfg.get("use_bidirectional_attention"):
    raise CheckpointError("use_bidirectional_attention=True is not supported (Gemma 3 text "
                          "decoders are causal)")
  act = cfg.get("hidden_activation") or cfg.get("hidden_act") or "gelu_pytorch_tanh"
  if act != "gelu_pytorch_tanh":
    raise CheckpointError(f"Gemma 3 activation {act!r} is not supported (only gelu_pytorch_tanh)")
  L = common["num_layers"]
  types = list(cfg.get("layer_types") or [
      "sliding_attention" if (i + 1) % int(cfg.get("sliding_window_pattern",
                                                   cfg.get("_sliding_window_pattern", 6))) else
      "full_attention" for i in range(L)])
  windows = _layer_windows({"layer_types": types}, L, cfg.get("sliding_window")) or (None,) * L
  if cfg.get("rope_scaling"):  # transformers applies it to the global layers
    raise CheckpointError(f"RoPE scaling {cfg['rope_scaling']!r} is not supported by the decoder")
  rp = cfg.get("rope_parameters") or {}
  fallback = {"sliding_attention": cfg.get("rope_local_base_freq", 10000.0),
              "full_attention": cfg.get("rope_theta", 1e6)}  # transformers' own fallbacks
  thetas = {}
  for kind in ("sliding_attention", "full_attention"):
    p = rp.get(kind) or {}
    if p.get("rope_type", "default") != "default" or p.get("factor", 1.0) != 1.0:
      raise CheckpointError(f"RoPE scaling {p!r} ({kind}) is not supported by the decoder")
    thetas[kind] = float(p.get("rope_theta", fallback[kind]))
  common = dict(common, rope_theta=thetas["full_attention"])
  return DecoderConfig(
      mlp="geglu", norm="gemma_rmsnorm", embed_scale=True, qk_norm=True, post_norms=True,
      tie_embeddings=bool(cfg.get("tie_word_embeddings", True)),
      query_scale=float(cfg.get("query_pre_attn_scalar", 256)) ** -0.5,
      layer_windows=windows, layer_rope_thetas=tuple(thetas[t] for t in types), **common)


def params_from_hf_state_dict(config: DecoderConfig, sd: Mapping[str, np.ndarray]) -> dict:
  """Our params pytree (float32 numpy) from an HF-named state dict of ``[out, in]`` arrays.

  Keys may carry a leading ``model.`` (as in safetensors files) or not. The Q/K rows must
  already be in HF's rotate_half layout (``config.rope_layout == 'half'``)."""
  def get(name, shape=None):
    for key in (f"model.{name}", name):
      if key in sd:
        a = np.asarray(sd[key], dtype=np.float32)
        if shape is not None and a.shape != tuple(shape):
          raise CheckpointError(f"{key}: expected shape {tuple(shape)}, got {a.shape}")
        return a
    raise CheckpointError(f"checkpoint has no tensor {name!r} (nor 'model.{name}')")

  D, H, KV, Dh, F, V = (config.d_model, config.num_heads, config.kv_heads, config.dh,
                        config.ff, config.vocab_size)
  params: dict = {"embed": {"embedding": get("embed_tokens.weight", (V, D))}}
  # Gemma 2/3 name the MLP's input norm pre_feedforward_layernorm and use
  # post_attention_layernorm for the norm AFTER attention; Llama/Gemma use the latter as the
  # MLP's input norm.
  mlp_norm = "pre_feedforward_layernorm" if config.post_norms else "post_attention_layernorm"
  for l in range(config.num_layers):
    p = f"layers.{l}."
    params[f"layer_{l}"] = {
        "norm1": {"scale": get(p + "input_layernorm.weight", (D,))},
        "attn": {
            "q": get(p + "self_attn.q_proj.weight", (H * Dh, D)).T.reshape(D, H, Dh),
            "k": get(p + "self_attn.k_proj.weight", (KV * Dh, D)).T.reshape(D, KV, Dh),
            "v": get(p + "self_attn.v_proj.weight", (KV * Dh, D)).T.reshape(D, KV, Dh),
            "o": get(p + "self_attn.o_proj.weight", (D, H * Dh)).T.reshape(H, Dh, D),
        },
        "norm2": {"scale": get(p + mlp_norm + ".weight", (D,))},
        "mlp": {
            "up": get(p + "mlp.up_proj.weight", (F, D)).T,
            "gate": get(p + "mlp.gate_proj.weight", (F, D)).T,
            "down": get(p + "mlp.down_proj.weight", (D, F)).T,
        },
    }
    if config.qkv_bias:  # Qwen2: q/k/v biases [heads * Dh] -> [heads, Dh]; o has none
      params[f"layer_{l}"]["attn"].update(
          {f"{x}_bias": get(p + f"self_attn.{x}_proj.bias", (n * Dh,)).reshape(n, Dh)
           for x, n in (("q", H), ("k", KV), ("v", KV))})
    if config.qk_norm:
      params[f"layer_{l}"]["attn"].update(
          q_norm={"scale": get(p + "self_attn.q_norm.weight", (Dh,))},
          k_norm={"scale": get(p + "self_attn.k_norm.weight", (Dh,))})
    if config.post_norms:
      params[f"layer_{l}"].update(
          post_attn_norm={"scale": get(p + "post_attention_layernorm.weight", (D,))},
          post_mlp_norm={"scale": get(p + "post_feedforward_layernorm.weight", (D,))})
  params["final_norm"] = {"scale": get("norm.weight", (D,))}
  if not config.tie_embeddings:
    if "lm_head.weight" not in sd:
      raise CheckpointError("untied checkpoint has no lm_head.weight")
    lm = np.asarray(sd["lm_head.weight"], np.float32)
    if lm.shape != (V, D):
      raise CheckpointError(f"lm_head.weight: expected shape {(V, D)}, got {lm.shape}")
    params["lm_head"] = {"kernel": lm.T}
  # Contiguous copies: transposed views would be copied again by every jnp.asarray.
  return jax.tree_util.tree_map(np.ascontiguousarray, params)


def read_safetensors(directory: str | os.PathLike) -> dict[str, np.ndarray]:
  """All tensors of ``directory/*.safetensors`` as float32 numpy arrays (bf16 included)."""
  try:
    from safetensors import safe_open
  except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("reading HF checkpoints needs `safetensors`: "
                      "pip install 'collapse_jax[llm]' (or pip install safetensors)") from e
  files = sorted(Path(directory).glob("*.safetensors"))
  if not files:
    raise CheckpointError(f"no *.safetensors files in {directory} (PyTorch .bin checkpoints are "
                          "not read: convert them to safetensors first)")
  out: dict[str, np.ndarray] = {}
  for f in files:
    raw = None
    with safe_open(str(f), framework="np") as fh:
      for k in fh.keys():
        try:
          out[k] = np.asarray(fh.get_tensor(k)).astype(np.float32)
        except TypeError:  # numpy has no bfloat16/fp8: safetensors' numpy API refuses them
          raw = _read_raw_safetensors(f) if raw is None else raw
          out[k] = raw[k].astype(np.float32)
  return out


_RAW_DTYPES = {"BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
               "F16": "float16", "F32": "float32", "F64": "float64"}


def _read_raw_safetensors(path: Path) -> dict[str, np.ndarray]:
  """Minimal reader for the safetensors format (8-byte little-endian header size, JSON
  header with dtype/shape/data_offsets, raw little-endian data) for dtypes numpy lacks."""
  import ml_dtypes
  data = np.memmap(path, dtype=np.uint8, mode="r")  # no full read: 7B checkpoints are large
  n = int.from_bytes(data[:8].tobytes(), "little")
  header = json.loads(data[8:8 + n].tobytes())
  body = data[8 + n:]
  out = {}
  for k, info in header.items():
    if k == "__metadata__" or info["dtype"] not in _RAW_DTYPES:
      continue
    name = _RAW_DTYPES[info["dtype"]]
    dt = np.dtype(getattr(ml_dtypes, name)) if hasattr(ml_dtypes, name) else np.dtype(name)
    a, b = info["data_offsets"]
    out[k] = body[a:b].view(dt.newbyteorder("<")).reshape(info["shape"])
  return out


def load_hf_checkpoint(directory: str | os.PathLike) -> tuple[DecoderConfig, dict]:
  """(DecoderConfig, float32 params) from a local HF Llama/Gemma checkpoint directory.

  Never downloads anything: a missing directory or file is a :class:`CheckpointError`."""
  directory = Path(directory).expanduser()
  cfg_path = directory / "config.json"
  if not cfg_path.is_file():
    raise CheckpointError(
        f"{cfg_path} not found: pass a local HF checkpoint directory with config.json and "
        "*.safetensors (e.g. one saved by `huggingface-cli download google/gemma-7b` on a machine "
        "with network access); collapse_jax never downloads weights")
  cfg = json.loads(cfg_path.read_text())
  config = config_from_hf(cfg)
  sd = read_safetensors(directory)
  if config.tie_embeddings and "lm_head.weight" in sd:
    emb = sd.get("model.embed_tokens.weight", sd.get("embed_tokens.weight"))
    if emb is not None and not np.array_equal(sd["lm_head.weight"], emb):
      config = config.replace(tie_embeddings=False)
  return config, params_from_hf_state_dict(config, sd)


@dataclasses.dataclass
class HFModel:
  """A local HF checkpoint directory loaded as a GGUFModel is: ``config``, float32 ``params``,
  ``path`` (the directory), ``name`` / ``label`` / ``prompt_format`` (set by
  ``checkpoints.load_model``), ``eos_token_ids`` (config.json's) and ``tokenizer`` (the
  directory's tokenizer.json, read with ``tokenizers``)."""
  config: DecoderConfig
  params: dict
  path: Path
  eos_token_ids: list
  name: str = ""
  label: str = ""
  prompt_format: str = ""

  @functools.cached_property
  def tokenizer(self):
    file = self.path / "tokenizer.json"
    if not file.is_file():
      raise CheckpointError(f"{file} not found: the prompts need the model's tokenizer.json")
    try:
      from tokenizers import Tokenizer
    except ImportError as e:  # pragma: no cover - depends on the environment
      raise ImportError("reading tokenizer.json needs `tokenizers`: "
                        "pip install 'collapse_jax[llm]'") from e
    return Tokenizer.from_file(str(file))


def load_hf_model(directory: str | os.PathLike) -> HFModel:
  """:func:`load_hf_checkpoint` plus what the apps need of a model: its end-of-sequence ids
  (config.json's ``eos_token_id``, an int or a list) and, on first use, its tokenizer."""
  directory = Path(directory).expanduser()
  config, params = load_hf_checkpoint(directory)
  eos = json.loads((directory / "config.json").read_text()).get("eos_token_id")
  eos = [] if eos is None else [int(e) for e in (eos if isinstance(eos, list) else [eos])]
  return HFModel(config, params, directory, eos)

