"""Training the one decoder with optax on counting and copying, per precision (issue 13).

Words (used the same way in experiments/train.py and BUILD_NOTES):

  task         count_ones, copy_first or copy_last (TASKS).
  sequence     [BOS, x_1 .. x_n], x_i in {ZERO, ONE}; n is the sequence length in digits.
  answer       ONE token, read from the logits of the last row (x_n's): the count as the token
               COUNT0 + c (count_ones), or the digit token x_1 / x_n (copy). Why one token and
               not a digit string: Cor. B.10's premise is that the answer is a function of the
               last token's final representation y_n alone. With one answer token it is
               exactly that, and the sweep engine's y_n vs y_(n+1) distance measures what the
               answer depends on; a digit string would add decoding steps in which later digits
               also see the first. The cost: counts above the largest trained count are never a
               target, so beyond L_train a count can be right only if c <= L_train ("answerable",
               reported separately).
  L_train      training lengths are n in 1..L_train (uniform); evaluation runs out to k*L_train.
  vocabulary   BOS=0, ZERO=1, ONE=2, COUNT0=3 .. COUNT0 + max_count (vocab_size(max_count)).

Precision presets (PRESETS, ``TrainPrecision``): where each tensor lives and where it is
rounded. Every rounding is round-to-nearest-even (``astype``), at these named points:

  preset              master weights  optimizer moments  forward policy  rounding points
  float32             f32             f32                float32         none
  bfloat16 (mixed)    f32             f32                bfloat16        weights_cast
  bfloat16_weights    bf16            bf16               bfloat16        grads, moments, weights

  weights_cast  the master weights rounded to the forward policy's param dtype at every step
                (``Policy.cast_params``), inside the differentiated function: its transpose
                returns the bf16-valued gradient as f32.
  grads         the gradient in the master weights' dtype (bf16 master: the backward's output
                is bf16), upcast to f32 for the update.
  moments       Adam's mu and nu, updated in f32 from their stored values, rounded to the
                moment dtype.
  weights       the new weights, computed in f32 (w + update), rounded to the master dtype.
                In bf16 an update below half an ulp of w is lost (no stochastic rounding).

The forward is THE decoder under the preset's policy (precision.Policy: its 17 activation
rounding points); the loss (log-softmax and cross-entropy of the last row's logits), the
gradient clipping and the AdamW update run in f32. The backward pass is JAX's transpose of
that forward: each cotangent has its primal's dtype, so in the bf16 presets the gradients of
stored (bf16) activations are bf16; the policy names no rounding points in the backward.

Data are generated on the host from ``numpy.random.default_rng([seed, step])``, so a run
resumed from a checkpoint at step s sees the same batches as an uninterrupted one (tested
bit for bit). Sequences of a batch are left-padded to one width; pads are invalid keys at
position 0 (as in generate.prefill), so the real tokens keep positions 0..n.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from collapse_jax import jobs
from collapse_jax import model as model_lib
from collapse_jax import precision
from collapse_jax import results
from collapse_jax.config import DecoderConfig

TASKS = ("count_ones", "copy_first", "copy_last")
BOS, ZERO, ONE, COUNT0 = 0, 1, 2, 3
TRAIN_ROUNDING_POINTS = ("weights_cast", "grads", "moments", "weights")


def vocab_size(max_count: int) -> int:
  """BOS, ZERO, ONE and the count tokens 0..max_count."""
  return COUNT0 + max_count + 1


@dataclasses.dataclass(frozen=True)
class TrainPrecision:
  """Where the training state lives: master weights (``master_dtype``), optimizer moments
  (``moment_dtype``), and the forward's precision ``policy`` (a precision preset name)."""
  name: str
  master_dtype: Any
  moment_dtype: Any
  policy_name: str

  @property
  def policy(self) -> precision.Policy:
    """The preset, off the length-invariant schedule (``Policy.untiled``): training batches
    short sequences, which 128-row tiles and 256-key blocks would pad many times over; the
    trained model's collapse is measured through the sweep, on the schedule."""
    return precision.get_policy(self.policy_name).untiled()

  @property
  def rounds_at(self) -> tuple:
    """The training rounding points this preset actually rounds at (see module docstring)."""
    master, pol = jnp.dtype(self.master_dtype), self.policy
    out = []
    if pol.param_dtype != master:
      out.append("weights_cast")
    if master != jnp.float32:
      out.append("grads")
      out.append("weights")
    if jnp.dtype(self.moment_dtype) != jnp.float32:
      out.append("moments")
    return tuple(p for p in TRAIN_ROUNDING_POINTS if p in out)

  def describe(self) -> dict:
    return {"name": self.name, "master_dtype": str(jnp.dtype(self.master_dtype)),
            "moment_dtype": str(jnp.dtype(self.moment_dtype)), "forward_policy": self.policy_name,
            "update_dtype": "float32", "rounds_at": list(self.rounds_at),
            "rounding": "round-to-nearest-even (astype)"}


PRESETS = {
    "float32": TrainPrecision("float32", jnp.float32, jnp.float32, "float32"),
    "bfloat16": TrainPrecision("bfloat16", jnp.float32, jnp.float32, "bfloat16"),
    "bfloat16_weights": TrainPrecision("bfloat16_weights", jnp.bfloat16, jnp.bfloat16, "bfloat16"),
}


def get_preset(name: str) -> TrainPrecision:
  if name not in PRESETS:
    raise ValueError(f"unknown training precision {name!r}; valid: {', '.join(PRESETS)}")
  return PRESETS[name]


# -- data ------------------------------------------------------------------------------------
class Batch(NamedTuple):
  """A left-padded batch. tokens/positions int32 [B, W], valid bool [B, W] (False = pad),
  answer int32 [B] (the target token), n int32 [B] (digits), count int32 [B] (ones)."""
  tokens: np.ndarray
  positions: np.ndarray
  valid: np.ndarray
  answer: np.ndarray
  n: np.ndarray
  count: np.ndarray


def sequences(task: str, rng: np.random.Generator, ns) -> tuple[list[np.ndarray], np.ndarray,
                                                                 np.ndarray]:
  """One random sequence per n in ``ns``: (sequences [BOS, x_1..x_n] as int32 arrays,
  answers int32 [B], counts int32 [B]). count_ones: the count c is uniform in 0..n and the
  c ones are at uniformly random places (so every count is as likely at every n); copy tasks:
  the digits are fair coin flips."""
  if task not in TASKS:
    raise ValueError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
  seqs, answers, counts = [], [], []
  for n in ns:
    n = int(n)
    if task == "count_ones":
      c = int(rng.integers(0, n + 1))
      bits = np.zeros(n, np.int32)
      bits[rng.permutation(n)[:c]] = 1
    else:
      bits = rng.integers(0, 2, n).astype(np.int32)
      c = int(bits.sum())
    x = np.concatenate([[BOS], ZERO + bits]).astype(np.int32)
    ans = {"count_ones": COUNT0 + c, "copy_first": ZERO + bits[0],
           "copy_last": ZERO + bits[-1]}[task]
    seqs.append(x); answers.append(ans); counts.append(c)
  return seqs, np.asarray(answers, np.int32), np.asarray(counts, np.int32)


def pad_left(seqs: Sequence[np.ndarray], width: int) -> tuple[np.ndarray, ...]:
  """Left-pad to ``width``: (tokens, positions, valid), each [B, width]. Pads are BOS
  tokens at position 0 that no query may attend to."""
  B = len(seqs)
  tokens = np.full((B, width), BOS, np.int32)
  positions = np.zeros((B, width), np.int32)
  valid = np.zeros((B, width), bool)
  for i, s in enumerate(seqs):
    if len(s) > width:
      raise ValueError(f"a sequence of {len(s)} tokens does not fit width {width}")
    tokens[i, width - len(s):] = s
    positions[i, width - len(s):] = np.arange(len(s))
    valid[i, width - len(s):] = True
  return tokens, positions, valid


def make_batch(task: str, rng: np.random.Generator, ns, width: int | None = None) -> Batch:
  """A batch with one sequence per n in ``ns`` (width default: the longest, 1 + max n)."""
  ns = np.asarray(ns, np.int32)
  seqs, answer, count = sequences(task, rng, ns)
  tokens, positions, valid = pad_left(seqs, width or int(ns.max()) + 1)
  return Batch(tokens, positions, valid, answer, ns, count)


def train_batch(task: str, seed: int, step: int, batch_size: int, l_train: int) -> Batch:
  """The batch of training step ``step``: n uniform in 1..l_train, width l_train + 1, from
  ``default_rng([seed, step])`` (the same batch however the run was interrupted)."""
  rng = np.random.default_rng([seed, step])
  return make_batch(task, rng, rng.integers(1, l_train + 1, batch_size), l_train + 1)


# -- state, loss, step -----------------------------------------------------------------------
class TrainState(NamedTuple):
  """step int32 []; params: master weights (master dtype); opt_state: optax state (moments in
  the moment dtype, counts int32)."""
  step: Any
  params: Any
  opt_state: Any


def _floats_to(tree, dtype):
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
  params = _floats_to(model_lib.init_params(cfg, jax.random.key(seed)), tp.master_dtype)
  opt_state = _floats_to(opt.transform().init(_floats_to(params, jnp.float32)), tp.moment_dtype)
  return TrainState(jnp.zeros((), jnp.int32), params, opt_state)


def forward_logits(cfg: DecoderConfig, tp: TrainPrecision, master, tokens, positions, valid,
                   collect=()):
  """The last row's logits [B, V] (forward policy's storage dtype) from the master weights,
  rounded at ``weights_cast`` first; plus any ``collect``ed intermediates."""
  pol = tp.policy
  out = model_lib.forward(cfg, pol, pol.cast_params(master), tokens, positions=positions,
                          key_valid=valid, collect=("last_logits",) + tuple(collect))
  return out


def loss_fn(cfg: DecoderConfig, tp: TrainPrecision, master, batch: Batch):
  """Mean cross-entropy of the answer token (f32) and (accuracy, per-row correct)."""
  logits = forward_logits(cfg, tp, master, batch.tokens, batch.positions,
                          batch.valid)["last_logits"].astype(jnp.float32)
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, batch.answer[:, None], axis=-1)[:, 0]
  correct = jnp.argmax(logits, axis=-1) == batch.answer
  return nll.mean(), correct


@functools.lru_cache(maxsize=None)
def step_fn(cfg: DecoderConfig, tp: TrainPrecision, opt: Optimizer) -> Callable:
  """The jitted train step (state donated): (state, batch) -> (state, metrics) with metrics
  {loss, accuracy, grad_norm (f32 global norm before clipping), lr}."""
  tx = opt.transform()
  schedule = opt.schedule()

  def step(state: TrainState, batch: Batch):
    (loss, correct), grads = jax.value_and_grad(
        lambda p: loss_fn(cfg, tp, p, batch), has_aux=True)(state.params)
    grads32 = _floats_to(grads, jnp.float32)        # 'grads' (bf16 master: bf16 values)
    params32 = _floats_to(state.params, jnp.float32)
    updates, opt32 = tx.update(grads32, _floats_to(state.opt_state, jnp.float32), params32)
    new_params = _floats_to(optax.apply_updates(params32, updates), tp.master_dtype)  # 'weights'
    new_opt = _floats_to(opt32, tp.moment_dtype)                                      # 'moments'
    metrics = {"loss": loss, "accuracy": correct.mean(), "grad_norm": optax.tree.norm(grads32),
               "lr": schedule(state.step)}
    return TrainState(state.step + 1, new_params, new_opt), metrics

  return jax.jit(step, donate_argnums=(0,))


@functools.lru_cache(maxsize=None)
def _predict_fn(cfg: DecoderConfig, tp: TrainPrecision):
  return jax.jit(lambda p, t, pos, v: jnp.argmax(
      forward_logits(cfg, tp, p, t, pos, v)["last_logits"].astype(jnp.float32), axis=-1))


def predict(cfg: DecoderConfig, tp: TrainPrecision, params, batch: Batch) -> np.ndarray:
  """Greedy answer tokens int32 [B] under the preset's forward policy."""
  return np.asarray(_predict_fn(cfg, tp)(params, batch.tokens, batch.positions, batch.valid))


def eval_width(n: int) -> int:
  """The padded width of an n-digit evaluation batch: the power of two >= n + 1, at least
  16 (so an evaluation grid compiles a few programs, not one per n)."""
  return max(16, 1 << int(n).bit_length())


def evaluate(cfg: DecoderConfig, tp: TrainPrecision, params, task: str, ns, *, samples: int,
             seed: int, l_train: int) -> list[dict]:
  """Accuracy at each length n in ``ns``: ``samples`` fresh sequences of exactly n digits,
  left-padded to a power-of-two width (:func:`eval_width`: one compile per width), from
  ``default_rng([seed, 2**31 - 1, n])`` (disjoint from the training batches' streams). count_ones also reports the accuracy on the answerable rows
  (count <= l_train, the largest trained count) and the predicted counts."""
  rows = []
  for n in ns:
    rng = np.random.default_rng([seed, 2**31 - 1, int(n)])
    b = make_batch(task, rng, np.full(samples, int(n), np.int32), eval_width(int(n)))
    pred = predict(cfg, tp, params, b)
    ok = pred == b.answer
    row = {"n": int(n), "accuracy": float(ok.mean()), "samples": int(samples)}
    if task == "count_ones":
      ans = b.count <= l_train
      row["answerable"] = int(ans.sum())
      row["accuracy_answerable"] = float(ok[ans].mean()) if ans.any() else None
      row["mean_abs_error"] = float(np.abs((pred - COUNT0) - b.count).mean())
    rows.append(row)
  return rows


# -- checkpoints -----------------------------------------------------------------------------
CHECKPOINT = "checkpoint.npz"


def _leaves(tree) -> tuple[list[str], list]:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [jax.tree_util.keystr(k) for k, _ in flat], [v for _, v in flat]


def save_checkpoint(path: str, state: TrainState, meta: dict) -> None:
  """Atomic npz (temp file + rename): every leaf of ``state`` by its key path, as raw bits
  (so bf16 and every other dtype round-trip exactly) with its dtype name, plus ``meta``
  (JSON: flags, history). A half-written checkpoint never replaces a good one."""
  names, leaves = _leaves(state)
  arrays, dtypes = {}, {}
  for i, (name, leaf) in enumerate(zip(names, leaves)):
    a = np.asarray(jax.device_get(leaf))
    dtypes[name] = str(a.dtype)
    # ml_dtypes' bfloat16 and fp8 are user-defined numpy dtypes (isbuiltin 2), which npz
    # cannot describe: stored as unsigned ints of the same bits
    arrays[f"leaf_{i}"] = a.view(np.dtype(f"u{a.dtype.itemsize}")) if a.dtype.isbuiltin == 2 else a
  header = json.dumps({"names": names, "dtypes": dtypes, "meta": meta})
  with results.atomic_open(path, "wb") as f:
    np.savez(f, header=np.frombuffer(header.encode(), np.uint8), **arrays)


def identity(cfg: DecoderConfig, tp: TrainPrecision, opt: "Optimizer", task: str, seed: int,
             batch_size: int, l_train: int) -> dict:
  """What decides a run's trajectory (stored in its checkpoints as meta['run'])."""
  return {"config": cfg.to_dict(), "preset": tp.name, "optimizer": dataclasses.asdict(opt),
          "task": task, "seed": int(seed), "batch_size": int(batch_size),
          "l_train": int(l_train)}


def load_checkpoint(path: str, like: TrainState, expect: dict | None = None
                    ) -> tuple[TrainState, dict]:
  """(state, meta) from :func:`save_checkpoint`, into the structure of ``like`` (a fresh
  state of the same config, preset and optimizer). A file whose leaves differ in name, shape
  or dtype is a ValueError naming the first difference; so is one whose meta['run'] differs
  from ``expect`` (:func:`identity`: config, preset, optimizer, task, seed, batch, l_train),
  which shapes alone cannot tell apart (e.g. float32 vs bfloat16, or another task)."""
  import ml_dtypes  # noqa: F401  (registers bfloat16 and the fp8 dtypes with numpy)
  with np.load(path) as z:
    header = json.loads(bytes(z["header"]).decode())
    names, leaves = _leaves(like)
    if header["names"] != names:
      extra = sorted(set(header["names"]) ^ set(names))[:3]
      raise ValueError(f"checkpoint {path}: its state has other leaves than this run's "
                       f"(e.g. {extra}): a different model or optimizer")
    got = header["meta"].get("run")
    if expect is not None and got != json.loads(json.dumps(expect)):
      diff = sorted(k for k in set(expect) | set(got or {})
                    if json.dumps((got or {}).get(k)) != json.dumps(expect.get(k)))
      what = ", ".join(diff) if diff else "no run record"
      raise ValueError(f"checkpoint {path} is of another run ({what} differ)")
    out = []
    for i, (name, ref) in enumerate(zip(names, leaves)):
      a = z[f"leaf_{i}"]
      dt = np.dtype(header["dtypes"][name])
      if a.dtype != dt:
        a = a.view(dt)
      if a.shape != tuple(ref.shape) or dt != np.dtype(ref.dtype):
        raise ValueError(f"checkpoint {path}: {name} is {dt}{list(a.shape)}, this run needs "
                         f"{np.dtype(ref.dtype)}{list(ref.shape)}")
      out.append(jnp.asarray(a))
  treedef = jax.tree_util.tree_structure(like)
  return jax.tree_util.tree_unflatten(treedef, out), header["meta"]


# -- the loop --------------------------------------------------------------------------------
def train(cfg: DecoderConfig, tp: TrainPrecision, opt: Optimizer, task: str, *, seed: int,
          batch_size: int, l_train: int, eval_every: int, eval_samples: int = 256,
          state: TrainState | None = None, history: dict | None = None,
          checkpoint: str | None = None, log=jobs.say, stop_after: int | None = None,
          should_stop: Callable[[], bool] = lambda: False) -> tuple[TrainState, dict]:
  """Train from ``state`` (default: fresh) to ``opt.steps``. Every ``eval_every`` steps and at
  the end: in-distribution accuracy on ``eval_samples`` fresh sequences (n uniform in
  1..l_train), a progress line with the ETA, and (``checkpoint``) an atomic checkpoint.
  ``stop_after``: stop after this many steps of this call (to test resuming);
  ``should_stop()`` is asked before every step (a signal handler's flag): when it says True
  the run stops there and, with ``checkpoint``, saves the state it reached first.

  Returns (state, history) with history {'steps', 'loss', 'accuracy', 'grad_norm', 'lr'}
  (every step), 'evals' [{step, accuracy, train_loss}] (periodic), 'train_s' (seconds of
  training over every call that built this history) and 'stopped_at' (the step a
  should_stop ended the run at, else None). Checkpoints carry meta {'history', 'run':
  :func:`identity`}."""
  state = init_state(cfg, tp, opt, seed) if state is None else state
  history = history or {"steps": [], "loss": [], "accuracy": [], "grad_norm": [], "lr": [],
                        "evals": [], "train_s": 0.0}
  run = identity(cfg, tp, opt, task, seed, batch_size, l_train)
  before_s = history.get("train_s", 0.0)
  step = step_fn(cfg, tp, opt)
  start = int(state.step)
  t0, done = time.perf_counter(), 0
  pending = []  # metrics still on device (fetched at eval time: no per-step sync)

  def flush():
    for s, m in pending:
      m = jax.device_get(m)
      history["steps"].append(s)
      for k in ("loss", "accuracy", "grad_norm", "lr"):
        history[k].append(float(m[k]))
    pending.clear()

  last = opt.steps if stop_after is None else min(opt.steps, start + stop_after)
  history["stopped_at"] = None
  for s in range(start, last):
    if should_stop():
      flush()
      history["stopped_at"] = s
      if checkpoint:
        history["train_s"] = round(before_s + time.perf_counter() - t0, 2)
        save_checkpoint(checkpoint, state, {"history": history, "run": run})
      log(f"[{tp.name}] stopped at step {s}" + (f"; checkpoint {checkpoint}" if checkpoint else ""))
      return state, history
    b = train_batch(task, seed, s, batch_size, l_train)
    state, m = step(state, b)
    pending.append((s, m))
    done += 1
    if (s + 1) % eval_every == 0 or s + 1 == opt.steps:
      flush()
      rng = np.random.default_rng([seed, 2**31 - 2, s])
      ev = make_batch(task, rng, rng.integers(1, l_train + 1, eval_samples), l_train + 1)
      acc = float((predict(cfg, tp, state.params, ev) == ev.answer).mean())
      since = history["evals"][-1]["step"] if history["evals"] else 0
      window = history["loss"][since:]  # the steps since the last evaluation
      history["evals"].append({"step": s + 1, "accuracy": acc,
                               "train_loss": float(np.mean(window))})
      el = time.perf_counter() - t0
      eta = el / done * (opt.steps - s - 1)
      log(f"[{tp.name}] step {s + 1}/{opt.steps}: loss {np.mean(window):.4f}, "
          f"in-distribution accuracy {acc:.3f}, grad norm {history['grad_norm'][-1]:.3g}; "
          f"elapsed {jobs.clock(el)}, ETA {jobs.clock(eta)}")
      history["train_s"] = round(before_s + time.perf_counter() - t0, 2)
      if checkpoint:
        save_checkpoint(checkpoint, state, {"history": history, "run": run})
  flush()
  history["train_s"] = round(before_s + time.perf_counter() - t0, 2)
  return state, history


def first_below(rows: Sequence[dict], key: str, threshold: float) -> int | None:
  """The first n whose ``key`` is below ``threshold`` (None: never)."""
  for r in rows:
    if r.get(key) is not None and r[key] < threshold:
      return r["n"]
  return None


# -- the trained model's collapse (Cor. B.10) ------------------------------------------------
def b10_pairs(max_count: int, vocab: int):
  """Cor. B.10's pairs as a sweep pair set: prefixes of [BOS, ONE, ONE, ...]. The set's n
  counts tokens, BOS included: A_n holds n-1 ones and B_n n ones, so a collapse at n means
  counts c = n-1 and c+1 get one answer."""
  from collapse_jax import pairs
  return pairs.make_family("prefix_repeat", max_count + 1, seed=0, vocab_size=vocab, token=ONE,
                           prefix_ids=[BOS])


def collapse(cfg: DecoderConfig, params, policies: Sequence[precision.Policy], max_count: int, *,
             task: str = "count_ones", memory_budget_gib: float = 2.0, log=jobs.say) -> dict:
  """The trained model's collapse on the Cor. B.10 pairs, counts 1..max_count, through the
  sweep engine (one causal pass per policy; ``sweep.run_grid``), its answers to the all-ones
  sequences, and the corollary's consequence checked against answers asked another way.
  ``params``: the master weights (upcast to f32, exactly; each policy casts them itself).

  Returns {policy name: {'counts' [C], 'linf' [C] (|y_c - y_(c+1)|_inf), 'equal' [C]
  (bitwise), 'collapse_onset' (first c with y_c == y_(c+1), -1: none), 'sustained_onset',
  'predicted' [max_count + 2] (the answer token's count for c = 0..max_count + 1 ones from
  one causal pass of the policy, -1 when the argmax is not a count token), 'same_answer' [C]
  (that pass gives c and c + 1 one answer token), 'corollary'}}.

  'corollary' (:func:`b10_consequence`; None for the copy tasks, whose pairs [BOS, 1^c] and
  [BOS, 1^(c+1)] have the same correct answer, so the corollary predicts nothing): for every
  count in a run of bitwise-equal pairs, the answer of the model as :func:`evaluate` asks it
  (:func:`answer_counts`: the sequence alone, left-padded to its evaluation width), not the
  row of the pass that measured the equality. The old check here (equal y but another
  answer token from the one-pass rows) could not fail: equal rows have one argmax."""
  from collapse_jax import engines, sweep
  if task not in TASKS:
    raise ValueError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
  params32 = _floats_to(params, jnp.float32)
  ns = np.arange(2, max_count + 2)
  recs = sweep.run_grid([sweep.Model(cfg, [params32])], list(policies),
                        {"b10": [b10_pairs(max_count, cfg.vocab_size)]}, ns, [0],
                        memory_budget=memory_budget_gib * engines.GiB, log=log)
  seq = np.concatenate([[BOS], np.full(max_count + 1, ONE)]).astype(np.int32)[None]
  out = {}
  for pol, rec in zip(policies, recs):
    logits = _logits_fn(cfg, pol)(pol.cast_params(params32), jnp.asarray(seq))
    tok = np.asarray(jnp.argmax(logits[0].astype(jnp.float32), axis=-1))
    predicted = np.where(tok >= COUNT0, tok - COUNT0, -1)  # [max_count + 2]: c = 0..max_count+1
    same = tok[1:-1] == tok[2:]  # [C]: the same answer TOKEN for c and c + 1, c = 1..max_count
    eq = np.asarray(rec["bitwise_equal"], bool)
    counts = ns - 1
    shift = lambda o: int(o) - 1 if o >= 0 else -1
    cor = None
    if task == "count_ones":
      asked = sorted({int(c) + k for c in counts[eq] for k in (0, 1)})
      answers = answer_counts(cfg, pol, params32, asked, memory_budget_gib=memory_budget_gib)
      cor = b10_consequence(eq, counts, answers, cfg.vocab_size - 1 - COUNT0)
    out[pol.name] = {"counts": counts, "linf": rec["linf"], "equal": eq,
                     "collapse_onset": shift(rec["collapse_onset"]),
                     "sustained_onset": shift(rec["sustained_onset"]),
                     "nonfinite_total": rec["nonfinite_total"], "predicted": predicted,
                     "same_answer": same, "corollary": cor}
  return out


def b10_consequence(equal_C, counts_C, answers: dict, max_count_token: int) -> dict:
  """Cor. B.10 on count_ones, judged from two measurements made apart: ``equal_C`` [C]
  (y_c == y_(c+1) bit for bit, c = ``counts_C`` [C]; the sweep engine) and ``answers``
  ({count: the model's answer as a count, -1 for a non-count token}; :func:`answer_counts`)
  for every count in an equal pair. ``max_count_token``: the largest count with an answer
  token (a larger count is wrong whatever the model says).

  Consecutive equal pairs chain: y_c == y_(c+1) == ... == y_(c+k) is one representation for
  k + 1 counts, and the correct answers c, ..., c + k all differ. If the answer is a function
  of y_n alone (the corollary's premise), they get one answer, so at most ONE of them is right
  and at least k are wrong. What is verified, per such class of counts: at most one of its
  counts is answered right ('violations' lists the classes with two or more). It fails when
  the representation the sweep found equal is not what decides the model's answer as asked
  (e.g. the engine's bits are not the exact-shape forward's) or the answer depends on more
  than y_n. It cannot fail on a class where at most one count is answerable (all counts but
  one above ``max_count_token``): 'classes_that_could_fail' counts the others.
  'answer_differs_at_equal': equal pairs whose two answers differ, and 'premise_holds' (it is
  0): the premise's direct test, that the sweep's equal y is what decides the answer as
  asked. It can fail wherever pairs are equal, answerable or not; the corollary's claim
  ('holds') allows it when both answers are wrong, so it is a separate verdict.

  Returns {'equal_pairs', 'classes' [[first, last] count], 'forced_wrong' (sum of k: the
  fewest wrong answers the corollary allows), 'wrong' (measured, over the classes' counts),
  'violations', 'classes_that_could_fail', 'answer_differs_at_equal', 'premise_holds',
  'holds'}."""
  eq = np.asarray(equal_C, bool)
  counts = np.asarray(counts_C, np.int64)
  classes, j = [], 0
  while j < len(eq):
    if not eq[j]:
      j += 1
      continue
    k = j
    while k + 1 < len(eq) and eq[k + 1] and counts[k + 1] == counts[k] + 1:
      k += 1
    classes.append((int(counts[j]), int(counts[k]) + 1))  # counts c_j .. c_k + 1
    j = k + 1
  missing = sorted({c for a, b in classes for c in range(a, b + 1)} - set(answers))
  if missing:
    raise ValueError(f"b10_consequence: no answer for counts {missing[:5]}")
  right = lambda c: int(answers[c]) == c
  violations, could, wrong = [], 0, 0
  for a, b in classes:
    members = range(a, b + 1)
    wrong += sum(not right(c) for c in members)
    if sum(right(c) for c in members) >= 2:
      violations.append([a, b])
    could += sum(c <= max_count_token for c in members) >= 2
  differs = int(sum(int(answers[int(c)]) != int(answers[int(c) + 1]) for c in counts[eq]))
  return {"equal_pairs": int(eq.sum()), "classes": [list(c) for c in classes],
          "forced_wrong": int(sum(b - a for a, b in classes)), "wrong": int(wrong),
          "violations": violations, "classes_that_could_fail": int(could),
          "answer_differs_at_equal": differs, "premise_holds": differs == 0,
          "holds": not violations}


@functools.lru_cache(maxsize=None)
def _answer_fn(cfg: DecoderConfig, pol: precision.Policy):
  return jax.jit(lambda p, t, pos, v: jnp.argmax(model_lib.forward(
      cfg, pol, p, t, positions=pos, key_valid=v,
      collect=("last_logits",))["last_logits"].astype(jnp.float32), axis=-1))


def answer_counts(cfg: DecoderConfig, pol: precision.Policy, params, counts, *,
                  memory_budget_gib: float = 2.0) -> dict:
  """The model's answer to [BOS, 1^c] for each c in ``counts``, asked as :func:`evaluate`
  asks it: the sequence alone in its row, left-padded to ``eval_width(c)`` (pads are invalid
  keys), the argmax of the last row's logits under ``pol`` (params: f32 master weights).
  Rows of one width run together, as many as fit ``memory_budget_gib`` (scores [H, W, W],
  4 bytes, 16 live copies per row). Returns {c: answered count (-1: a non-count token)}."""
  p = pol.cast_params(params)
  by_width: dict = {}
  for c in sorted(set(int(c) for c in counts)):
    by_width.setdefault(eval_width(c), []).append(c)
  out = {}
  for W, cs in by_width.items():
    rows = max(1, int(memory_budget_gib * 2**30 // (16 * 4 * cfg.num_heads * W * W)))
    for a in range(0, len(cs), rows):
      chunk = cs[a:a + rows]
      seqs = [np.concatenate([[BOS], np.full(c, ONE)]).astype(np.int32) for c in chunk]
      seqs += [seqs[-1]] * (rows - len(chunk)) if len(cs) > rows else []  # one shape per W
      t, pos, v = pad_left(seqs, W)
      tok = np.asarray(_answer_fn(cfg, pol)(p, jnp.asarray(t), jnp.asarray(pos), jnp.asarray(v)))
      for c, k in zip(chunk, tok):
        out[c] = int(k) - COUNT0 if k >= COUNT0 else -1
  return out


@functools.lru_cache(maxsize=None)
def _logits_fn(cfg: DecoderConfig, pol: precision.Policy):
  return jax.jit(lambda p, t: model_lib.forward(cfg, pol, p, t, collect=("logits",))["logits"])


@functools.lru_cache(maxsize=None)
def _grad_norm_fn(cfg: DecoderConfig, tp: TrainPrecision):
  def gn(p, batch):
    g = jax.grad(lambda q: loss_fn(cfg, tp, q, batch)[0])(p)
    return optax.tree.norm(_floats_to(g, jnp.float32))
  return jax.jit(gn)


def grad_norm_by_length(cfg: DecoderConfig, tp: TrainPrecision, params, task: str, ns, *,
                        samples: int, seed: int) -> list[dict]:
  """The global gradient norm (f32, before clipping) of the loss on ``samples`` sequences of
  exactly n digits, for each n: what the optimizer would be told at each length. count_ones
  rows need n <= the largest count token."""
  rows = []
  for n in ns:
    rng = np.random.default_rng([seed, 2**31 - 3, int(n)])
    b = make_batch(task, rng, np.full(samples, int(n), np.int32), eval_width(int(n)))
    rows.append({"n": int(n), "grad_norm": float(_grad_norm_fn(cfg, tp)(params, b))})
  return rows


def measure(cfg: DecoderConfig, tp: TrainPrecision, params, task: str, ns, *, l_train: int,
            seed: int, eval_samples: int, grad_samples: int, onset_policies, max_count: int,
            memory_budget_gib: float = 2.0, should_stop: Callable[[], bool] = lambda: False
            ) -> dict | None:
  """A trained model's record: accuracy at every n of ``ns`` (:func:`evaluate`), the gradient
  norm there (:func:`grad_norm_by_length`), its collapse on Cor. B.10's pairs under each onset
  policy (:func:`collapse`) and the first n whose accuracy is below 0.5. None when
  ``should_stop()`` says so between these phases."""
  out = {"precision": tp.describe()}
  phases = (("accuracy", lambda: evaluate(cfg, tp, params, task, ns, samples=eval_samples,
                                          seed=seed, l_train=l_train)),
            ("grad_norm_by_length", lambda: grad_norm_by_length(
                cfg, tp, params, task, ns, samples=grad_samples, seed=seed)),
            ("collapse", lambda: collapse(cfg, params, onset_policies, max_count, task=task,
                                          memory_budget_gib=memory_budget_gib,
                                          log=lambda *_: None)))
  for key, run in phases:
    if should_stop():
      return None
    out[key] = run()
  out["first_n_below_half"] = first_below(out["accuracy"], "accuracy", .5)
  return out
