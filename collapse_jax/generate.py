"""Greedy decoding in the one decoder, under any precision policy (answer log-probabilities:
:mod:`collapse_jax.scoring`).

Words (used here, in :mod:`collapse_jax.scoring` and in :mod:`collapse_jax.tasks`):

  prompt        a list of token ids (BOS included where the model wants one).
  B, P, S       batch (prompts decoded together), the bucketed prompt length, cache slots.
  left padding  the prompts of a batch are left-padded to P: row i's tokens sit in slots
                [P - len_i, P) with positions 0..len_i-1; pad slots are invalid keys (never
                attended: ``Policy.softmax`` gives them weight exactly 0), so a row's values
                do not depend on the other rows' lengths, mathematically.
  cache         {'k', 'v': [L, B, S, KV, Dh] (storage dtype: keys after RoPE, rounded at
                'rope'; values rounded at 'qkv'), 'pos': int32 [B, S], 'valid': bool [B, S]},
                preallocated. The prefill fills slots [0, P); decode step t writes slot P + t.
  step          one new token per row: the decoder's cache path (``model.forward(cache=)``),
                attending to the S cache slots (the unfilled ones invalid) plus itself.
  greedy        the next token is the argmax of the last row's logits as the policy stores
                them (rounded at 'logits'); ties go to the lowest id (``jnp.argmax``).

Compiles: the prefill once per (policy, B, P, S), the decode program (``block_steps`` steps
in one device loop) once per (policy, B, S) (``bucket`` rounds P, and S - P, the slots for
new tokens, up to a power of two, so a sweep over prompt lengths reuses a few programs).

Speed (measured numbers in BUILD_NOTES): the weights are cast and laid out as the dots
read them once (:func:`blocked_weights`), not at every step (XLA does not hoist those copies
out of the decode loop), and the prefill's attention runs in chunks of :data:`PREFILL_CHUNK`
query rows over only the key blocks they can see. A row stops after it emits a stop id or
its decoded text contains a stop string (the stopping token is kept, as HF transformers'
``generate`` keeps its EOS), or after ``max_new_tokens``; the batch stops when every row has.

Bits. Two decoders, one stopping rule:
  * fast (default): the prefill, the decode steps and ``scoring.score``'s continuations run
    under :func:`fast_policy`: the policy's dtypes and rounding points, off the
    length-invariant schedule and in the backend's dot order (a row alone in a 128-row tile
    would cost more; blocked, zero-padded contractions too). Low bits can differ from fresh
    forwards and from one CPU to another (tests/test_generate.py states the tolerance, and
    checks every greedy token against fresh forwards).
  * ``on_path=True``: each prompt alone (B = 1), its tokens at stream indices 0.. (right
    padding, never left), and every decode step on the schedule: the new row placed in its
    row tile at its own stream index, its key written into the cache at that slot (the
    kv_cache engine's step, ``model.forward(cache={'length': ...})``). Every step's logits
    then have the bits of an exact-length forward of the prompt and the tokens so far, in
    every policy (tested bit for bit), at about ``row_tile`` times the projections' work
    per step (BUILD_NOTES, "Generation on the path").
"""
from __future__ import annotations

import dataclasses
import functools
import time
import weakref
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from collapse_jax import model as model_lib
from collapse_jax.config import DecoderConfig
from collapse_jax.precision import Policy


# The prefill's attention runs in chunks of this many query rows, each chunk attending only
# to the keys it can see (causal models), in multiples of PREFILL_KEY_BLOCK
# (``model.forward(key_block=)``, head-major: ``attention._untiled_attention``). SmolLM2 f32,
# 2000-token prefill on a 2-core Xeon (BUILD_NOTES, "Speed"): 64/512 5.02 s, 64/256 4.56 s,
# 128/256 4.35 s. Chunks change the attention's dot shapes, so low bits may differ from a
# whole pass (f32 rtol 1e-5); generation is checked against uncached forwards with a
# tolerance in any case.
PREFILL_CHUNK = 128
PREFILL_KEY_BLOCK = 256


def fast_policy(policy: Policy) -> Policy:
  """The policy of the fast decoder (the prefill, the decode steps and ``scoring.score``):
  ``policy``'s dtypes and rounding points, off the length-invariant schedule
  (``Policy.untiled``) and with the backend's order inside each dot (``accum_block`` None:
  one dot per contraction, weights without zero padding, accumulated in ``accum_dtype``).
  Low bits then depend on shapes and the CPU; ``greedy_decode(on_path=True)`` keeps the
  schedule's bits."""
  return dataclasses.replace(policy.untiled(), accum_block=None)


def bucket(n: int, minimum: int = 64) -> int:
  """n rounded up to a power of two, and at least ``minimum``: every distinct bucket is one
  compile of a real model's 30-layer program (seconds each on a CPU), which costs more than
  the padded rows."""
  return max(minimum, 1 << max(int(n) - 1, 0).bit_length())


@dataclasses.dataclass
class Generation:
  """What :func:`greedy_decode` returns. ``ids``: the new token ids per prompt; ``stop``: why each row
  stopped ('stop_id', 'stop_string' or 'length'); P / S: prompt bucket and cache slots;
  ``prefill_s`` / ``decode_s``: wall time (compiles included on first use); ``steps``: decode
  steps run, in whole blocks (the first new token comes from the prefill)."""
  ids: list
  stop: list
  P: int
  S: int
  prefill_s: float
  decode_s: float
  steps: int


def _filled(out, pos_BP, valid_BP, S: int) -> dict:
  """The cache of S slots after a forward of P rows (``out``'s 'k', 'v' [L, B, P, KV, Dh]; the
  rows' positions and validity [B, P]): slots P.. zero and invalid."""
  pad = S - pos_BP.shape[1]
  kv = lambda x: jnp.pad(x, ((0, 0), (0, 0), (0, pad), (0, 0), (0, 0)))
  row = lambda x: jnp.pad(x, ((0, 0), (0, pad)))
  return {"k": kv(out["k"]), "v": kv(out["v"]), "pos": row(pos_BP), "valid": row(valid_BP)}


def _marked(cache: dict, kv: dict, slot, pos_B) -> dict:
  """The cache of keys and values ``kv`` ('k', 'v'), with slot ``slot`` (may be traced) at
  position ``pos_B`` [B] and valid."""
  return {"k": kv["k"], "v": kv["v"], "pos": cache["pos"].at[:, slot].set(pos_B),
          "valid": cache["valid"].at[:, slot].set(True)}


def _written(cache: dict, out, slot, pos_B) -> dict:
  """``cache`` with one decode step's new key and value (``out``'s 'k', 'v' [L, B, 1, KV,
  Dh]) at ``slot`` (may be traced), its position ``pos_B`` [B], and that slot valid."""
  put = lambda c, new: jax.lax.dynamic_update_slice_in_dim(c, new.astype(c.dtype), slot, 2)
  return _marked(cache, {"k": put(cache["k"], out["k"]), "v": put(cache["v"], out["v"])},
                 slot, pos_B)


@functools.lru_cache(maxsize=32)
def _programs(cfg: DecoderConfig, pol: Policy, query_chunk: int | None):
  """The jitted prefill and decode step of one (config, policy)."""

  def prefill(params, blocked, tokens_BP, pos_BP, valid_BP, S):
    out = model_lib.forward(cfg, pol, params, tokens_BP, positions=pos_BP, key_valid=valid_BP,
                            collect=("kv", "last_logits"), query_chunk=query_chunk,
                            blocked=blocked, key_block=PREFILL_KEY_BLOCK)
    logits = out["last_logits"]
    return _filled(out, pos_BP, valid_BP, S), jnp.argmax(logits, -1).astype(jnp.int32), logits

  def step(params, blocked, cache, tok_B, pos_B, slot):
    # one row per sequence, off the schedule (``pol`` is a fast_policy), where a row alone
    # would cost a whole tile; its low bits are those of a one-row dot. A float32 cache takes
    # its key and value at ``slot`` layer by layer, in place (collect 'cache'), and attention
    # reads the S slots from there (SmolLM2 at S = 2112: 84 -> 65 ms per step). Any other
    # dtype appends them to a per-layer copy instead: in place, bf16 steps were slower on
    # XLA:CPU (96 -> 152 ms; 366 -> 1575 ms at batch 8). BUILD_NOTES, "Speed".
    in_place = cache["k"].dtype == jnp.float32
    out = model_lib.forward(cfg, pol, params, tok_B[:, None], positions=pos_B[:, None],
                            cache={**cache, "length": slot} if in_place else cache,
                            collect=("cache" if in_place else "kv", "last_logits"),
                            blocked=blocked)
    new = (_marked(cache, out["cache"], slot, pos_B) if in_place else
           _written(cache, out, slot, pos_B))
    return new, jnp.argmax(out["last_logits"], -1).astype(jnp.int32)

  def steps(params, blocked, cache, tok_B, pos_B, slot, K):
    """K decode steps in one program (a loop on the device), with the weights pre-blocked
    (:func:`blocked_weights`: cast and laid out once, not once per token). Returns
    the cache and the K new tokens [K, B]."""
    def body(i, carry):
      cache, tok, toks = carry
      cache, tok = step(params, blocked, cache, tok, pos_B + i, slot + i)
      return cache, tok, toks.at[i].set(tok)
    init = (cache, tok_B, jnp.zeros((K,) + tok_B.shape, jnp.int32))
    cache, _, toks = jax.lax.fori_loop(0, K, body, init)
    return cache, toks

  return (jax.jit(prefill, static_argnums=5),
          jax.jit(steps, static_argnums=6, donate_argnums=2))


@functools.lru_cache(maxsize=32)
def _blocking(cfg: DecoderConfig, pol: Policy):
  dummy = jnp.zeros((1, 1), jnp.int32)  # the forward itself is dead code: only the copies run
  return jax.jit(lambda params: model_lib.forward(cfg, pol, params, dummy,
                                                  collect=("last_logits", "blocked"))["blocked"])


_BLOCKED: list = []  # at most one entry: (weak references to the params' leaves, cfg, policy, blocked)


def blocked_weights(cfg: DecoderConfig, policy: Policy, params):
  """Every weight as ``policy``'s dots use it (``model.forward(collect=("blocked",))``: cast,
  padded, split into accumulation blocks and laid out for the dot), for
  ``forward(blocked=...)``. The copy (the size of the weights, or larger) is made once and
  kept for the next call with the same ``params`` leaves (one entry; the arrays are treated as immutable, as JAX treats them),
  so repeated generations and scorings over one model do not repeat it."""
  leaves = jax.tree_util.tree_leaves(params)
  if _BLOCKED:
    refs, c, p, blocked = _BLOCKED[0]
    if (c == cfg and p == policy and len(refs) == len(leaves)
        and all(r() is leaf for r, leaf in zip(refs, leaves))):
      return blocked
  _BLOCKED.clear()  # drop the old copy before making the next
  blocked = _blocking(cfg, policy)(params)
  try:
    _BLOCKED.append(([weakref.ref(leaf) for leaf in leaves], cfg, policy, blocked))
  except TypeError:  # a leaf that cannot be weakly referenced: not kept
    pass
  return blocked


def _check_prompts(cfg: DecoderConfig, prompts: Sequence[Sequence[int]]) -> list:
  if not cfg.vocab_size:
    raise ValueError("generation needs a token model (vocab_size > 0)")
  if len(prompts) == 0 or any(len(p) == 0 for p in prompts):
    raise ValueError("generation needs at least one prompt, each of at least one token")
  out = [np.asarray(p, np.int64) for p in prompts]
  for p in out:
    cfg.check_token_ids(p, "prompt tokens")
  return out


def prefill(cfg: DecoderConfig, policy: Policy, params, prompts: Sequence[Sequence[int]],
            slots: int, *, query_chunk: int | None = PREFILL_CHUNK):
  """Left-pad ``prompts`` to P = bucket(longest) and run them once.

  Returns (cache with S = max(slots, P) slots, next ids int32 [B] (greedy), last-row logits
  [B, V] as stored, lengths [B], P, the weights pre-blocked for the decode steps)."""
  prompts = _check_prompts(cfg, prompts)
  lengths = np.asarray([len(p) for p in prompts])
  P = bucket(int(lengths.max()))
  B = len(prompts)
  tokens, pos = np.zeros((B, P), np.int32), np.zeros((B, P), np.int32)
  valid = np.zeros((B, P), bool)
  for i, p in enumerate(prompts):
    tokens[i, P - len(p):], pos[i, P - len(p):], valid[i, P - len(p):] = p, np.arange(len(p)), True
  fast = fast_policy(policy)
  fill, _ = _programs(cfg, fast, query_chunk)
  blocked = blocked_weights(cfg, fast, params)
  cache, nxt, logits = fill(params, blocked, tokens, pos, valid, max(int(slots), P))
  return cache, nxt, logits, lengths, P, blocked


@functools.lru_cache(maxsize=32)
def _on_path_programs(cfg: DecoderConfig, pol: Policy):
  """The jitted fill and decode steps of ``greedy_decode(on_path=True)`` (B = 1)."""

  def fill(params, blocked, tokens_1P, n, S):
    """The first ``n`` tokens of tokens_1P (right-padded; the padding rows invalid and after
    them: causally unseen) at stream indices 0..n-1 in a cache of S slots."""
    P = tokens_1P.shape[1]
    valid = (jnp.arange(P) < n)[None]
    out = model_lib.forward(cfg, pol, params, tokens_1P, key_valid=valid, collect=("kv",),
                            blocked=blocked)
    return _filled(out, jnp.arange(P, dtype=jnp.int32)[None], valid, S)

  def steps(params, blocked, cache, tok, p, K):
    """K greedy steps from token ``tok`` at stream index ``p`` (traced): each writes its key
    at slot p + i and places its row in the row tile of index p + i. Returns the cache, the
    K next tokens [K] and their logits [K, V] (as stored)."""
    def body(i, carry):
      cache, tok, toks, lgs = carry
      at = p + i
      out = model_lib.forward(cfg, pol, params, tok.reshape(1, 1), positions=at.reshape(1, 1),
                              cache={**cache, "length": at}, collect=("kv", "last_logits"),
                              blocked=blocked)
      cache = _written(cache, out, at, at[None])
      lg = out["last_logits"][0]
      nxt = jnp.argmax(lg).astype(jnp.int32)
      return cache, nxt, toks.at[i].set(nxt), lgs.at[i].set(lg.astype(lgs.dtype))
    init = (cache, tok, jnp.zeros((K,), jnp.int32),
            jnp.zeros((K, cfg.vocab_size), pol.compute_dtype))  # stored values, exact in it
    cache, _, toks, lgs = jax.lax.fori_loop(0, K, body, init)
    return cache, toks, lgs

  return (jax.jit(fill, static_argnums=4), jax.jit(steps, static_argnums=5, donate_argnums=2))


def on_path_steps(cfg: DecoderConfig, policy: Policy, params, prompt: Sequence[int],
                  slots: int, block_steps: int):
  """``greedy_decode(on_path=True)`` for one prompt: fills the cache with all but the
  prompt's last token (done when this returns) and returns an iterator whose every item
  runs ``block_steps`` more steps: (tokens [K] int, logits [K, V] as stored), np arrays. The
  first item's first token is the prompt's greedy next token. ``slots``: cache slots, at
  least len(prompt) + the steps that will be asked for."""
  prompt = _check_prompts(cfg, [prompt])[0]
  fill, steps = _on_path_programs(cfg, policy)
  blocked = blocked_weights(cfg, policy, params)
  n, K = len(prompt) - 1, int(block_steps)
  tokens = np.zeros((1, bucket(n)), np.int32)
  tokens[0, :n] = prompt[:-1]
  cache = jax.block_until_ready(fill(params, blocked, tokens, jnp.int32(n), int(slots)))

  def blocks():
    nonlocal cache
    tok, p = jnp.int32(prompt[-1]), n
    while True:
      if p + K > slots:
        raise ValueError(f"on-path decoding ran past its {slots} cache slots")
      cache, toks, lgs = steps(params, blocked, cache, tok, jnp.int32(p), K)
      toks = np.asarray(toks)
      yield toks, np.asarray(lgs)
      tok, p = jnp.int32(toks[-1]), p + K

  return blocks()


def _until_stopped(B: int, blocks, max_new_tokens: int, stop_ids, stop_strings, decode):
  """The stopping rule: read [B] token arrays from the iterator ``blocks`` (each item a list
  of them) until every row has stopped. Returns (ids, stop, blocks read)."""
  ids, stop = [[] for _ in range(B)], [None] * B
  stops = set(int(i) for i in stop_ids)
  read = 0
  for pending in blocks:
    read += 1
    for tok in pending:
      for i in range(B):
        if stop[i] is None:
          ids[i].append(int(tok[i]))
          if ids[i][-1] in stops:
            stop[i] = "stop_id"
          elif stop_strings and any(s in decode(ids[i]) for s in stop_strings):
            stop[i] = "stop_string"
          elif len(ids[i]) == max_new_tokens:
            stop[i] = "length"
      if all(s is not None for s in stop):
        return ids, stop, read
  raise AssertionError("the token blocks ended before every row stopped")


def greedy_decode(cfg: DecoderConfig, policy: Policy, params,
                  prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
                  stop_ids: Sequence[int] = (), stop_strings: Sequence[str] = (),
                  decode: Callable[[list], str] | None = None,
                  query_chunk: int | None = PREFILL_CHUNK, block_steps: int = 8,
                  on_path: bool = False) -> Generation:
  """Batched greedy decoding (see the module docstring). ``params``: cast by
  ``policy.cast_params``. ``decode`` (ids -> text) is needed for ``stop_strings``.
  ``query_chunk``: the prefill's attention in chunks of this many query rows
  (:data:`PREFILL_CHUNK`; None: the whole [P, P] pass).
  ``block_steps``: decode steps per device program (a row's tokens after its stop are
  computed and dropped; at most block_steps - 1 extra steps per call).
  ``on_path``: every token on the length-invariant schedule, one prompt at a time (the
  module docstring, "Bits"); P is then the cache's prompt bucket and ``prefill_s`` the
  prompts' fills."""
  if block_steps < 1:
    raise ValueError(f"block_steps must be >= 1, got {block_steps}")
  if max_new_tokens < 0:
    raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
  if stop_strings and decode is None:
    raise ValueError("stop_strings need decode= (token ids -> text)")
  prompts = _check_prompts(cfg, prompts)
  B = len(prompts)
  if max_new_tokens == 0:
    return Generation([[] for _ in prompts], ["length"] * B, 0, 0, 0.0, 0.0, 0)
  K = int(block_steps)
  rule = dict(max_new_tokens=max_new_tokens, stop_ids=stop_ids, stop_strings=stop_strings,
              decode=decode)
  if on_path:
    ids, stop, fill_s, t0, steps_run = [], [], 0.0, time.perf_counter(), 0
    longest = max(len(p) for p in prompts)
    S = bucket(longest + -(-max_new_tokens // K) * K)
    for p in prompts:
      t = time.perf_counter()
      blocks = on_path_steps(cfg, policy, params, p, S, K)
      fill_s += time.perf_counter() - t
      i, s, read = _until_stopped(1, ([[int(t)] for t in toks] for toks, _ in blocks), **rule)
      ids.append(i[0])
      stop.append(s[0])
      steps_run += read * K
    return Generation(ids, stop, bucket(longest - 1), S, fill_s,
                      time.perf_counter() - t0 - fill_s, steps_run)
  t0 = time.perf_counter()
  P = bucket(max(len(p) for p in prompts))
  S = P + bucket(-(-(max_new_tokens - 1) // K) * K)  # room for whole blocks of steps
  cache, nxt, _, lengths, P, blocked = prefill(cfg, policy, params, prompts, S,
                                               query_chunk=query_chunk)
  last = np.asarray(nxt)  # waits for the prefill
  t1 = time.perf_counter()
  _, steps = _programs(cfg, fast_policy(policy), query_chunk)

  def blocks():
    nonlocal cache, last
    yield [last]  # the first token comes from the prefill
    t = 1
    while True:
      cache, toks = steps(params, blocked, cache, jnp.asarray(last, jnp.int32),
                          jnp.asarray(lengths + t - 1, jnp.int32), P + t - 1, K)
      toks = list(np.asarray(toks))
      yield toks
      last, t = toks[-1], t + K

  ids, stop, read = _until_stopped(B, blocks(), **rule)
  t2 = time.perf_counter()
  return Generation(ids, stop, P, S, t1 - t0, t2 - t1, (read - 1) * K)


def greedy(cfg: DecoderConfig, policy: Policy, params, prompts: Sequence[Sequence[int]],
           max_new_tokens: int, stop_ids: Sequence[int] = (), **kw) -> list:
  """The new token ids per prompt (list of lists), greedy; keywords as :func:`greedy_decode`."""
  return greedy_decode(cfg, policy, params, prompts, max_new_tokens, stop_ids=stop_ids, **kw).ids
