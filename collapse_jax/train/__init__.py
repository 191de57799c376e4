"""Training the one decoder with optax on counting and copying, per precision (issue 13).

Words (defined here once; the modules, experiments/train.py and BUILD_NOTES use them so):

  training task  count_ones, copy_first or copy_last (``data.TRAIN_TASKS``). Not the C.1
                 prompt tasks of ``collapse_jax.tasks`` (``tasks.TASKS``), which ask a real
                 model in words; a training task's answer is one token.
  sequence       [BOS, x_1 .. x_n], x_i in {ZERO, ONE}; n is the sequence length in digits.
  answer         ONE token, read from the logits of the last row (x_n's): the count as the
                 token COUNT0 + c (count_ones), or the digit token x_1 / x_n (copy). Why one
                 token: Cor. B.10's premise is that the answer is a function of the last
                 token's final representation y_n alone. With one answer token it is exactly
                 that, and the sweep engine's y_n vs y_(n+1) distance measures what the answer
                 depends on; a digit string would add decoding steps in which later digits
                 also see the first. The cost: counts above the largest trained count are
                 never a target, so beyond L_train a count can be right only if c <= L_train
                 ("answerable", reported separately).
  L_train        training lengths are n in 1..L_train (uniform); evaluation runs out to
                 eval_factor * L_train.
  vocabulary     BOS=0, ZERO=1, ONE=2, COUNT0=3 .. COUNT0 + max_count (``data.vocab_size``).
  training precision  where the training state lives and where it is rounded
                 (``state.TrainPrecision``, registry ``state.TRAIN_PRECISIONS``). Its forward
                 is a preset of ``precision.PRESETS`` (``forward_preset``), not a second
                 precision registry.
  snapshot       a training run's own state (step, master weights, optimizer state) and
                 history in one exact, atomic npz (``snapshot.py``), written while it trains
                 so that it resumes bit for bit. Not a checkpoint: ``collapse_jax.checkpoints``
                 loads pretrained weights.
  B.10 pairs     [BOS, 1^c] vs [BOS, 1^(c+1)], c = 1..max_count: Cor. B.10's sequences, run
                 through the sweep engine to find where a trained model's y collapse.

Training precisions. Every rounding is round-to-nearest-even (``astype``), at these named
training points (``state.TRAIN_ROUNDING_POINTS``):

  precision           master weights  Adam moments  forward preset  rounds at
  float32             f32             f32           float32         none
  bfloat16 (mixed)    f32             f32           bfloat16        weights_cast
  bfloat16_weights    bf16            bf16          bfloat16        grads, moments, weights

  weights_cast  the master weights rounded to the forward policy's param dtype at every step
                (``Policy.cast_params``), inside the differentiated function: its transpose
                returns the bf16-valued gradient as f32.
  grads         the gradient in the master weights' dtype (bf16 master: the backward's output
                is bf16), upcast to f32 for the update.
  moments       Adam's mu and nu, updated in f32 from their stored values, rounded to the
                moment dtype.
  weights       the new weights, computed in f32 (w + update), rounded to the master dtype.
                In bf16 an update below half an ulp of w is lost (no stochastic rounding).

Modules, in import order:

  data      training tasks, sequences, left-padded batches and their rng streams
  state     training precisions, TrainState, the AdamW Optimizer, the loss and the jitted step
  snapshot  a TrainState's exact bits on disk, with the run's identity and history
  loop      ``train``: steps, periodic in-distribution checks and snapshots, mid-run resume
  measure   accuracy and gradient norm by length, the collapse on the B.10 pairs, Cor. B.10's
            consequence (``b10_consequence``), ``measure`` (one trained model's record)
"""
from collapse_jax.train import data, state, snapshot, loop, measure  # noqa: I001 (import order)

__all__ = ["data", "state", "snapshot", "loop", "measure"]
