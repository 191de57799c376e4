r"""Greedy decoding speed: collapse_jax.generate vs HF transformers' ``generate``, same run.

  python -m experiments.bench_generate                          # SmolLM2, prompts 100 and 2000
  python -m experiments.bench_generate --prompt_lens=100 --new_tokens=16 --dtype=float32,bfloat16
  python -m experiments.bench_generate --nohf --on_path --prompt_lens=300  # on-path cost
  python -m experiments.bench_generate --dtype=float32,bfloat16 --batch=1,8  # bf16, batch of 8

For each prompt length N the prompt is SmolLM2's chat-templated count-ones question with as
many ones as make exactly N tokens. Both sides decode ``--new_tokens`` greedy tokens from it
(no stop token on either side, so both run every step), on the CPU, in float32 (HF: torch, loading the same
GGUF file itself). Each side runs once to warm up (our compiles, torch's first-call costs),
then ``--repeats`` timed runs; the best is reported. Printed per N: prefill seconds, decode
tokens/s, end-to-end tokens/s (new tokens / (prefill + decode)) for each side, the ratio
ours/HF of end-to-end tokens/s, our compile seconds, and whether the tokens are identical.
``--batch``: batches of B prompts of N tokens each (row i has its last i ones as zeros, so
the rows differ), decoded together on both sides; tokens/s count every row's tokens.
Needs the `hf` extra (torch, transformers) for the HF side; --nohf times ours only.
"""
from __future__ import annotations

import dataclasses
import functools

from absl import app, flags

import collapse_jax  # noqa: F401  (applies the XLA guards before jax starts)
from collapse_jax import bench, checkpoints, cli, prompts, xla_env

F = flags.FLAGS


def define_flags(fv: flags.FlagValues) -> None:
  cli.define(fv, dtype="float32", model="smollm2")
  flags.DEFINE_list("prompt_lens", ["100", "2000"], "prompt lengths in tokens", flag_values=fv)
  flags.DEFINE_integer("new_tokens", 32, "greedy tokens decoded per prompt", flag_values=fv)
  flags.DEFINE_integer("repeats", 2, "timed runs per side (the best is reported)",
                       flag_values=fv)
  flags.DEFINE_list("batch", ["1"], "batch sizes: prompts of N tokens decoded together",
                    flag_values=fv)
  flags.DEFINE_bool("on_path", False, "also time greedy_decode(on_path=True): every step on "
                    "the length-invariant schedule (generate's docstring, 'Bits')",
                    flag_values=fv)
  flags.DEFINE_bool("hf", True, "also time HF transformers' generate (needs torch/"
                    "transformers)", flag_values=fv)


@dataclasses.dataclass(frozen=True)
class Spec:
  """A benchmark, parsed: ``policies`` (our side, one row each), the prompt lengths ``lens``
  in tokens (each >= 2; the prompt's own floor is checked once the tokenizer is loaded) and
  the ``batches`` (batch sizes)."""
  policies: list
  lens: list
  batches: list
  flags: dict


def parse(fl: dict) -> Spec:
  """Flags (``cli.app_flags()`` or ``cli.parse_argv``) -> :class:`Spec`; ValueError (one
  line) on a bad value. Reads no absl global and loads no model."""
  cli.check_model(fl["model"])
  policies = cli.policies(fl["dtype"])
  lens = cli.int_list(fl["prompt_lens"], "prompt_lens", minimum=2)
  batches = cli.int_list(fl["batch"], "batch", minimum=1)
  if fl["new_tokens"] < 2:
    raise ValueError(f"--new_tokens must be >= 2, got {fl['new_tokens']}")
  if fl["repeats"] < 1:
    raise ValueError(f"--repeats must be >= 1, got {fl['repeats']}")
  return Spec(policies, lens, batches, dict(fl))


def prompt_of_length(ckpt, n_tokens: int, zeros: int = 0) -> list:
  """The count-ones prompt (the model's prompt format) with exactly ``n_tokens`` tokens, its
  last ``zeros`` digits 0 instead of 1 (rows of a batch that differ, of one length)."""
  text = lambda k, z=0: prompts.prompt_text(
      f"{prompts.COUNT_QUESTION} {'1' * (k - z) + '0' * z}", ckpt.prompt_format)
  base = len(checkpoints.encode(ckpt.tokenizer, text(1), bos=True)) - 1
  if n_tokens <= base + zeros:
    raise ValueError(f"--prompt_lens: the prompt needs more than {base + zeros} tokens")
  ids = checkpoints.encode(ckpt.tokenizer, text(n_tokens - base, zeros), bos=True)
  if len(ids) != n_tokens:
    raise ValueError(f"the prompt of {n_tokens} tokens with {zeros} zeros tokenizes to "
                     f"{len(ids)} tokens (this tokenizer groups digits)")
  return ids


@functools.lru_cache(maxsize=None)
def _hf_model(path):
  """HF's model of the GGUF file (or of the HF directory), loaded once, with its end-of-sequence id switched off (model
  and generation config) so that it decodes every step, as our side (no stop ids) does. HF's
  ``min_new_tokens`` would instead set the EOS logit to -inf and so change its greedy tokens
  wherever EOS is the argmax (it is at N = 2000: BUILD_NOTES)."""
  import torch
  from transformers import AutoModelForCausalLM
  where = (dict(pretrained_model_name_or_path=str(path)) if path.is_dir() else  # HF directory
           dict(pretrained_model_name_or_path=str(path.parent), gguf_file=path.name))
  m = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32).eval()
  m.config.eos_token_id = None
  m.generation_config.eos_token_id = None
  return m


def hf(path, batch, new_tokens, repeats):
  """HF's greedy ``generate`` of the prompts ``batch`` (lists of token ids of one length)."""
  import torch
  m = _hf_model(path)
  x = torch.tensor(batch)
  gen = lambda: m.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens,
                           do_sample=False, num_beams=1, pad_token_id=0)
  with torch.no_grad():
    gen()
    # the prefill as generate runs it: logits of the last row only (generate passes
    # logits_to_keep=1; all rows' logits would add a [N, V] head to HF's prefill time)
    t_pre, _ = bench.best_of(lambda: m(x, use_cache=True, logits_to_keep=1), repeats)
    total, out = bench.best_of(gen, repeats)
  B, N = x.shape
  return {"prefill_s": t_pre, "decode_tok_s": B * (new_tokens - 1) / max(total - t_pre, 1e-9),
          "e2e_tok_s": B * new_tokens / total, "ids": out[:, N:].tolist(),
          "threads": torch.get_num_threads(), "torch": torch.__version__}


def main(argv):
  del argv
  with cli.usage_errors():
    spec = parse(cli.app_flags(__file__))
  fl = spec.flags
  new, repeats = fl["new_tokens"], fl["repeats"]
  ckpt = checkpoints.load_model(fl["model"])
  path = ckpt.path  # the GGUF file or the HF directory, which HF's side loads too
  print(f"{ckpt.label}; {new} new tokens per row, greedy; "
        f"numerics {xla_env.numerics_path()['name']}", flush=True)
  print(f"{'N':>5} {'B':>2} {'side':>14} {'prefill s':>9} {'decode tok/s':>12} {'e2e tok/s':>9} "
        f"{'step ms':>7} {'compile s':>9}  same tokens as HF f32", flush=True)
  for n in spec.lens:
    for B in spec.batches:
      with cli.usage_errors():
        batch = [prompt_of_length(ckpt, n, zeros=i) for i in range(B)]
      ref = hf(path, batch, new, repeats) if fl["hf"] else None
      if ref:
        print(f"{n:>5} {B:>2} {'HF torch f32':>14} {ref['prefill_s']:9.3f} "
              f"{ref['decode_tok_s']:12.1f} {ref['e2e_tok_s']:9.1f} "
              f"{1e3 * B / ref['decode_tok_s']:7.1f} {'-':>9}  "
              f"({ref['threads']} threads, torch {ref['torch']})", flush=True)
      for pol in spec.policies:
        params = pol.cast_params(ckpt.params)
        o = bench.generate_timings(ckpt.config, pol, params, batch, new, repeats)
        rows = [("ours " + pol.name, o)]
        if fl["on_path"]:
          rows.append(("on path", bench.generate_timings(ckpt.config, pol, params, batch, new,
                                                         repeats, on_path=True)))
        for side, r in rows:
          same = "-" if ref is None else str(r["ids"] == ref["ids"])
          print(f"{n:>5} {B:>2} {side:>14} {r['prefill_s']:9.3f} {r['decode_tok_s']:12.1f} "
                f"{r['e2e_tok_s']:9.1f} {r['step_ms']:7.1f} {r['compile_s']:9.1f}  {same} "
                f"(P={r['P']}, S={r['S']})", flush=True)
        if fl["on_path"]:
          print(f"RATIO N={n} B={B} {pol.name}: on-path/fast end-to-end tokens/s = "
                f"{rows[1][1]['e2e_tok_s'] / o['e2e_tok_s']:.3f}, same tokens: "
                f"{rows[1][1]['ids'] == o['ids']}", flush=True)
        if ref:
          print(f"RATIO N={n} B={B} {pol.name}: ours/HF end-to-end tokens/s = "
                f"{o['e2e_tok_s'] / ref['e2e_tok_s']:.2f}, decode = "
                f"{o['decode_tok_s'] / ref['decode_tok_s']:.2f}, prefill time HF/ours = "
                f"{ref['prefill_s'] / o['prefill_s']:.2f}", flush=True)


if __name__ == "__main__":
  define_flags(F)
  app.run(main)
