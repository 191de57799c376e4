"""DecoderConfig: one dataclass for the paper's synthetic models and real Llama/Gemma LLMs."""
from __future__ import annotations

import dataclasses
import math

MLP_KINDS = ("gelu", "swiglu", "geglu")
NORM_KINDS = ("layernorm", "rmsnorm", "gemma_rmsnorm")
PE_KINDS = ("rope", "sinusoidal", "alibi", "learned", "none")


def check_token_ids(ids, vocab_size: int, what: str = "token ids") -> None:
  """Fail fast on host token ids outside [0, vocab_size): inside jit an out-of-range id
  silently becomes a NaN row (or wraps, for -1)."""
  import numpy as np
  a = np.asarray(ids)
  if a.size and (a.min() < 0 or a.max() >= vocab_size):
    bad = a[(a < 0) | (a >= vocab_size)].ravel()[:5].tolist()
    raise ValueError(f"{what} {bad} outside the model vocabulary [0, {vocab_size})")


def window_mode(mode: str | int) -> str | int:
  """A window mode of :meth:`DecoderConfig.with_windows`, validated: 'native', 'global' or a
  window size >= 1 (an int or its digits; returned as an int). ValueError otherwise."""
  if mode in ("native", "global"):
    return mode
  if isinstance(mode, str) and mode.isdigit():
    mode = int(mode)
  if not isinstance(mode, int) or isinstance(mode, bool):
    raise ValueError(f"window mode must be 'native', 'global' or a window size, got {mode!r}")
  if mode < 1:
    raise ValueError(f"a window must be >= 1 token, got {mode}")
  return mode


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Architecture of the decoder (model.Decoder). Validated on construction.

  Attributes:
    num_layers, d_model, num_heads: L, D, H.
    num_kv_heads: KV heads (GQA); None = num_heads. Must divide num_heads.
    head_dim: Dh; None = d_model // num_heads.
    mlp: 'gelu' (tanh-approximate GELU, 2 matrices), 'swiglu' or 'geglu' (3 matrices).
    mlp_dim: F, hidden width; None = 4 * d_model.
    use_mlp: False drops the MLP block (attention-only layers, as in C.3).
    norm: 'layernorm' (scale+bias), 'rmsnorm' (x*w), 'gemma_rmsnorm' (x*(1+w)).
    norm_eps: epsilon inside the norm's rsqrt.
    pe: 'rope' | 'sinusoidal' | 'alibi' | 'learned' | 'none'.
    rope_theta: RoPE base; rope_layout 'half' (HF rotate_half) or 'interleaved' (GGUF).
    rope_scaling: () = plain RoPE; ('linear', factor), ('llama3', factor, low_freq_factor,
      high_freq_factor, original_max_len) or ('factors', f_0, .., f_(Dh/2-1)) (each
      frequency divided by its own factor: llama.cpp's ``rope_freqs`` tensor, how a Llama 3
      GGUF stores 'llama3') change the frequencies (``positional.rope_inv_freq``). Every layer.
    max_len: longest sequence the learned PE table (or a user's sweep) supports.
    causal: causal mask (False = bidirectional).
    sliding_window: attend only to keys with |i - j| < window in positions (causal: the
      window keys j <= i; bidirectional: both sides). None = global.
    layer_windows: per-layer windows (length L; an int or None = global per layer), e.g.
      Gemma 3's five local layers of 512 then one global. () = every layer `sliding_window`.
    layer_rope_thetas: per-layer RoPE bases (length L), e.g. Gemma 3's 1e4 for its local layers
      and 1e6 for its global ones; () = every layer `rope_theta`. Tied to the layer, not to
      its window: a model whose windows are changed keeps its layers' bases.
    qk_norm: a per-head norm (kind `norm`, weights [Dh]) on q and k after their projections,
      before RoPE (Gemma 3, Qwen3).
    qkv_bias: biases on the q, k and v projections ([H, Dh], [KV, Dh], [KV, Dh]), added to
      the dot in compute dtype before the 'qkv' rounding (Qwen2); the output projection has
      none.
    attn_softcap, final_softcap: tanh softcapping cap tanh(x / cap) of the attention scores
      (before mask and softmax) and of the output logits, each rounded at its own point
      ('attn_softcap', 'logit_softcap'); None = none (Gemma 2: 50 and 30).
    post_norms: a norm on the attention block's and the MLP block's outputs before each
      residual add (Gemma 2/3: z = v + norm(Attn(norm1(v))), v' = z + norm(MLP(norm2(z)))).
    vocab_size: > 0 for token-id input; 0 for raw-vector input ([B, N, D] floats).
    tie_embeddings: logits use the input embedding matrix transposed.
    embed_scale: multiply embeddings by sqrt(d_model), a compute-dtype scalar rounded at the
      policy's 'embed_scale' point (to storage in every preset; Gemma).
    init_var: variance of the Gaussian init of every weight; None = 1/d_model (the paper's
      C.3 init); e.g. 1.0 for Fig 10, 0.02^2 for converted checkpoints' fresh weights.
    query_scale: multiplier of q.k; None = 1/sqrt(head_dim).
  """
  num_layers: int = 2
  d_model: int = 64
  num_heads: int = 4
  num_kv_heads: int | None = None
  head_dim: int | None = None
  mlp: str = "gelu"
  mlp_dim: int | None = None
  use_mlp: bool = True
  norm: str = "layernorm"
  norm_eps: float = 1e-6
  pe: str = "rope"
  rope_theta: float = 10000.0
  rope_layout: str = "half"
  rope_scaling: tuple = ()
  max_len: int = 4096
  causal: bool = True
  sliding_window: int | None = None
  vocab_size: int = 0
  tie_embeddings: bool = True
  embed_scale: bool = False
  init_var: float | None = None
  query_scale: float | None = None
  layer_windows: tuple = ()
  layer_rope_thetas: tuple = ()
  qk_norm: bool = False
  qkv_bias: bool = False
  attn_softcap: float | None = None
  final_softcap: float | None = None
  post_norms: bool = False

  def __post_init__(self):
    def bad(msg):
      raise ValueError(f"DecoderConfig: {msg}")
    for name in ("num_layers", "d_model", "num_heads", "max_len"):
      if getattr(self, name) < 1:
        bad(f"{name} must be >= 1, got {getattr(self, name)}")
    if self.mlp not in MLP_KINDS:
      bad(f"unknown mlp {self.mlp!r}; valid: {', '.join(MLP_KINDS)}")
    if self.norm not in NORM_KINDS:
      bad(f"unknown norm {self.norm!r}; valid: {', '.join(NORM_KINDS)}")
    if self.pe not in PE_KINDS:
      bad(f"unknown pe {self.pe!r}; valid: {', '.join(PE_KINDS)}")
    if self.rope_layout not in ("half", "interleaved"):
      bad(f"unknown rope_layout {self.rope_layout!r}; valid: half, interleaved")
    if self.head_dim is None and self.d_model % self.num_heads:
      bad(f"num_heads={self.num_heads} does not divide d_model={self.d_model} "
          "(set head_dim explicitly for a non-dividing head count)")
    if self.num_heads % self.kv_heads:
      bad(f"num_kv_heads={self.kv_heads} must divide num_heads={self.num_heads}")
    if self.pe == "rope" and self.dh % 2:
      bad(f"RoPE needs an even head_dim, got {self.dh}")
    if self.pe == "sinusoidal" and self.d_model % 2:
      bad(f"sinusoidal PE needs an even d_model, got {self.d_model}")
    if self.sliding_window is not None and self.sliding_window < 1:
      bad(f"sliding_window must be >= 1 or None, got {self.sliding_window}")
    for name in ("layer_windows", "layer_rope_thetas"):
      v = getattr(self, name)
      if isinstance(v, list):
        object.__setattr__(self, name, tuple(v))
        v = tuple(v)
      if v and len(v) != self.num_layers:
        bad(f"{name} has {len(v)} entries for {self.num_layers} layers")
    if not all(w is None or (isinstance(w, int) and w >= 1) for w in self.layer_windows):
      bad(f"layer_windows entries must be ints >= 1 or None, got {self.layer_windows}")
    if not all(isinstance(t, (int, float)) and t > 0 for t in self.layer_rope_thetas):
      bad(f"layer_rope_thetas must be numbers > 0, got {self.layer_rope_thetas}")
    if self.layer_windows and self.sliding_window is not None:
      bad("set sliding_window or layer_windows, not both (layer_windows would win)")
    for name in ("attn_softcap", "final_softcap"):
      cap = getattr(self, name)
      if cap is not None and not (isinstance(cap, (int, float)) and cap > 0):
        bad(f"{name} must be a number > 0 or None, got {cap}")
    if isinstance(self.rope_scaling, list):
      object.__setattr__(self, "rope_scaling", tuple(self.rope_scaling))
    rs = self.rope_scaling
    if rs:
      size = {"linear": 2, "llama3": 5, "factors": 1 + self.dh // 2}.get(rs[0])
      if size is None or len(rs) != size:
        bad(f"rope_scaling must be (), ('linear', factor), ('llama3', factor, "
            f"low_freq_factor, high_freq_factor, original_max_len) or ('factors', one per "
            f"frequency: {self.dh // 2}), got {str(rs)[:120]}")
      if not all(isinstance(v, (int, float)) and v > 0 for v in rs[1:]):
        bad(f"rope_scaling's numbers must be > 0, got {rs}")
      if rs[0] == "llama3" and not rs[3] > rs[2]:
        bad(f"llama3 rope_scaling needs high_freq_factor > low_freq_factor, got {rs}")
      if self.pe != "rope":
        bad(f"rope_scaling needs pe='rope', not {self.pe!r}")
    if self.layer_rope_thetas and self.pe != "rope":
      bad(f"layer_rope_thetas needs pe='rope', not {self.pe!r}")

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def dh(self) -> int:
    return self.head_dim or self.d_model // self.num_heads

  @property
  def ff(self) -> int:
    return self.mlp_dim or 4 * self.d_model

  @property
  def variance(self) -> float:
    return 1.0 / self.d_model if self.init_var is None else self.init_var

  @property
  def qk_scale(self) -> float:
    return 1.0 / math.sqrt(self.dh) if self.query_scale is None else self.query_scale

  def window(self, layer: int) -> int | None:
    """Layer ``layer``'s sliding window (None = global)."""
    return self.layer_windows[layer] if self.layer_windows else self.sliding_window

  def rope_base(self, layer: int) -> float:
    """Layer ``layer``'s RoPE base."""
    return float(self.layer_rope_thetas[layer]) if self.layer_rope_thetas else self.rope_theta

  def with_windows(self, mode: str | int) -> "DecoderConfig":
    """The same model with its attention windows changed (the layers keep their RoPE bases):
    'native' = as configured; 'global' = no window in any layer; an int w (or its string) =
    every layer attends to a window of w (Gemma 3's mitigation study, issue 11)."""
    mode = window_mode(mode)
    if mode == "native":
      return self
    w = None if mode == "global" else mode
    return self.replace(sliding_window=None, layer_windows=(w,) * self.num_layers)

  @property
  def windowed(self) -> bool:
    """True if any layer has a sliding window."""
    return any(self.window(l) is not None for l in range(self.num_layers))

  def check_length(self, n: int) -> None:
    """Fail fast if a length exceeds what the positional encoding supports."""
    if self.pe == "learned" and n > self.max_len:
      raise ValueError(f"length {n} exceeds the learned PE table (max_len={self.max_len})")

  def check_token_ids(self, ids, what: str = "token ids") -> None:
    """:func:`check_token_ids` against this model's vocabulary (no-op for vector input)."""
    if self.vocab_size:
      check_token_ids(ids, self.vocab_size, what)

  def replace(self, **kw) -> "DecoderConfig":
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)
