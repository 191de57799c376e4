"""collapse_jax: representational collapse and over-squashing experiments in JAX/Flax.

Importing the package first applies the XLA numerics guards (see xla_env), then exposes
the library modules. ``from collapse_jax import metrics`` is the user-facing metric API.
"""
from collapse_jax import xla_env as _xla_env

_xla_env.apply_guards()

from collapse_jax import config, metrics, model, positional, precision  # noqa: E402
from collapse_jax.config import DecoderConfig  # noqa: E402
from collapse_jax.precision import Policy, get_policy  # noqa: E402

__version__ = "0.1.0"
__all__ = ["config", "metrics", "model", "positional", "precision", "DecoderConfig", "Policy",
           "get_policy"]
