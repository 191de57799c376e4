"""Training precisions, the training state, AdamW and the jitted step (words: collapse_jax/train).

A training precision (:class:`TrainPrecision`) is not a second precision registry: its
forward IS a preset of ``precision.PRESETS`` (``forward_preset``), and it adds only where
the training state lives (master weights, Adam moments) and the training rounding points
(TRAIN_ROUNDING_POINTS) of the table in the package docstring.

The loss (log-softmax and cross-entropy of the last row's logits), the gradient clipping and
the AdamW update run in f32. The backward pass is JAX's transpose of the policy's forward:
each cotangent has its primal's dtype, so in the bf16 precisions the gradients of stored
(bf16) activations are bf16; the policy names no rounding points in the backward.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from collapse_jax import model as model_lib
from collapse_jax import precision
from collapse_jax.config import DecoderConfig
from collapse_jax.train.data import Batch

TRAIN_ROUNDING_POINTS = ("weights_cast", "grads", "moments", "weights")


@dataclasses.dataclass(frozen=True)
class TrainPrecision:
  """Where the training state lives: master weights (``master_dtype``), Adam moments
  (``moment_dtype``), and the forward: the ``precision.PRESETS`` policy ``forward_preset``."""
  name: str
  master_dtype: Any
  moment_dtype: Any
  forward_preset: str

  def __post_init__(self):
    if self.forward_preset not in precision.PRESETS:
      raise ValueError(f"training precision {self.name!r}: its forward {self.forward_preset!r} "
                       f"is not a precision preset ({', '.join(precision.PRESETS)})")

  @property
  def policy(self) -> precision.Policy:
    """The forward preset, off the length-invariant schedule (``Policy.untiled``): training
    batches short sequences, which 128-row tiles and 256-key blocks would pad many times
    over; the trained model's collapse is measured through the sweep, on the schedule."""
    return precision.get_policy(self.forward_preset).untiled()

  @property
  def rounds_at(self) -> tuple:
    """The training rounding points this precision actually rounds at."""
    master = jnp.dtype(self.master_dtype)
    used = {"weights_cast": self.policy.param_dtype != master,
            "grads": master != jnp.float32, "weights": master != jnp.float32,
            "moments": jnp.dtype(self.moment_dtype) != jnp.float32}
    return tuple(p for p in TRAIN_ROUNDING_POINTS if used[p])

  def describe(self) -> dict:
    return {"name": self.name, "master_dtype": str(jnp.dtype(self.master_dtype)),
            "moment_dtype": str(jnp.dtype(self.moment_dtype)),
            "forward_policy": self.forward_preset, "update_dtype": "float32",
            "rounds_at": list(self.rounds_at), "rounding": "round-to-nearest-even (astype)"}


TRAIN_PRECISIONS = {
    "float32": TrainPrecision("float32", jnp.float32, jnp.float32, "float32"),
    "bfloat16": TrainPrecision("bfloat16", jnp.float32, jnp.float32, "bfloat16"),
    "bfloat16_weights": TrainPrecision("bfloat16_weights", jnp.bfloat16, jnp.bfloat16,
                                       "bfloat16"),
}


def train_precision(name: str) -> TrainPrecision:
  if name not in TRAIN_PRECISIONS:
    raise ValueError(f"unknown training precision {name!r}; valid: "
                     f"{', '.join(TRAIN_PRECISIONS)}")
  return TRAIN_PRECISIONS[name]


def train_precisions(names, what: str = "dtype") -> dict[str, TrainPrecision]:
  """['float32', 'bfloat16'] (a list flag's values) -> {name: TrainPrecision}, in order;
  ValueError (one line, naming ``--what``) for none, a repeated or an unknown name."""
  clean = [str(n).strip() for n in names if str(n).strip()]
  if not clean or len(set(clean)) != len(clean):
    raise ValueError(f"--{what} must name distinct training precisions, got {list(names)}")
  return {name: train_precision(name) for name in clean}


class TrainState(NamedTuple):
  """step int32 []; params: master weights (master dtype, model.py's layout); opt_state:
  optax state (moments in the moment dtype, counts int32)."""
  step: Any
  params: Any
  opt_state: Any


def floats_to(tree, dtype):
  """Every floating leaf of ``tree`` cast to ``dtype`` (astype: round-to-nearest-even)."""
  return jax.tree_util.tree_map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


@dataclasses.dataclass(frozen=True)
class Optimizer:
  """AdamW with linear warmup then cosine decay to ``end_lr_fraction * lr``, after clipping
  the global gradient norm to ``clip``."""
  lr: float = 3e-3
  warmup: int = 100
  steps: int = 2000
  end_lr_fraction: float = 0.05
  b1: float = 0.9
  b2: float = 0.98
  eps: float = 1e-8
  weight_decay: float = 0.01
  clip: float = 1.0

  def __post_init__(self):
    if self.steps < 1:
      raise ValueError(f"steps must be >= 1, got {self.steps}")
    if not 0 <= self.warmup < self.steps:
      raise ValueError(f"warmup must be in 0..steps-1 ({self.steps - 1}), got {self.warmup}")
    for name in ("lr", "clip"):
      if not getattr(self, name) > 0:
        raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")

  def schedule(self):
    return optax.warmup_cosine_decay_schedule(
        0.0, self.lr, self.warmup, max(self.steps, 2),
        self.lr * self.end_lr_fraction)

  def transform(self) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(self.clip),
                       optax.adamw(self.schedule(), self.b1, self.b2, self.eps,
                                   weight_decay=self.weight_decay))


def init_state(cfg: DecoderConfig, tp: TrainPrecision, opt: Optimizer, seed: int) -> TrainState:
  """Fresh state: C.3-init weights (model.init_params, f32) rounded to the master dtype."""
  params = floats_to(model_lib.init_params(cfg, jax.random.key(seed)), tp.master_dtype)
  opt_state = floats_to(opt.transform().init(floats_to(params, jnp.float32)), tp.moment_dtype)
  return TrainState(jnp.zeros((), jnp.int32), params, opt_state)


def forward_logits(cfg: DecoderConfig, tp: TrainPrecision, master, tokens_BW, positions_BW,
                   valid_BW, collect=()) -> dict:
  """The forward's outputs: 'last_logits' [B, V] (the policy's storage dtype) from the master
  weights, rounded at ``weights_cast`` first; plus any ``collect``ed intermediates."""
  pol = tp.policy
  return model_lib.forward(cfg, pol, pol.cast_params(master), tokens_BW, positions=positions_BW,
                           key_valid=valid_BW, collect=("last_logits",) + tuple(collect))


def loss_fn(cfg: DecoderConfig, tp: TrainPrecision, master, batch: Batch):
  """(mean cross-entropy of the answer token (f32 []), correct_B bool)."""
  logits_BV = forward_logits(cfg, tp, master, batch.tokens, batch.positions,
                             batch.valid)["last_logits"].astype(jnp.float32)
  logp_BV = jax.nn.log_softmax(logits_BV, axis=-1)
  nll_B = -jnp.take_along_axis(logp_BV, batch.answer[:, None], axis=-1)[:, 0]
  return nll_B.mean(), jnp.argmax(logits_BV, axis=-1) == batch.answer


@functools.lru_cache(maxsize=None)
def step_fn(cfg: DecoderConfig, tp: TrainPrecision, opt: Optimizer) -> Callable:
  """The jitted train step (state donated): (state, batch) -> (state, metrics) with metrics
  {loss, accuracy, grad_norm (f32 global norm before clipping), lr}."""
  tx = opt.transform()
  schedule = opt.schedule()

  def step(state: TrainState, batch: Batch):
    (loss, correct_B), grads = jax.value_and_grad(
        lambda p: loss_fn(cfg, tp, p, batch), has_aux=True)(state.params)
    grads32 = floats_to(grads, jnp.float32)        # 'grads' (bf16 master: bf16 values)
    params32 = floats_to(state.params, jnp.float32)
    updates, opt32 = tx.update(grads32, floats_to(state.opt_state, jnp.float32), params32)
    new_params = floats_to(optax.apply_updates(params32, updates), tp.master_dtype)  # 'weights'
    new_opt = floats_to(opt32, tp.moment_dtype)                                      # 'moments'
    metrics = {"loss": loss, "accuracy": correct_B.mean(),
               "grad_norm": optax.tree.norm(grads32), "lr": schedule(state.step)}
    return TrainState(state.step + 1, new_params, new_opt), metrics

  return jax.jit(step, donate_argnums=(0,))


@functools.lru_cache(maxsize=None)
def _answer_fn(cfg: DecoderConfig, pol: precision.Policy):
  return jax.jit(lambda p, t, pos, v: jnp.argmax(model_lib.forward(
      cfg, pol, p, t, positions=pos, key_valid=v,
      collect=("last_logits",))["last_logits"].astype(jnp.float32), axis=-1))


def answers(cfg: DecoderConfig, pol: precision.Policy, params, tokens_BW, positions_BW,
            valid_BW) -> np.ndarray:
  """The greedy answer token int32 [B]: the argmax of the last row's logits under ``pol``
  (``params`` already in the policy's dtypes)."""
  return np.asarray(_answer_fn(cfg, pol)(params, jnp.asarray(tokens_BW),
                                         jnp.asarray(positions_BW), jnp.asarray(valid_BW)))


def predict(cfg: DecoderConfig, tp: TrainPrecision, master, batch: Batch) -> np.ndarray:
  """Greedy answer tokens int32 [B] under the forward policy, from the master weights."""
  pol = tp.policy
  return answers(cfg, pol, pol.cast_params(master), batch.tokens, batch.positions, batch.valid)
