"""Test configuration: float64 is needed by the `float64` precision preset and the float64
reference comparisons. This is the only global setting made here.

A test that runs a precision policy this process cannot compile (float16 and fp8 under
``--xla_cpu_max_isa=SSE4_2``, see ``Policy.unavailable_reason``) is skipped with that
reason, by the policy names in its parameters; .ci/run's SSE4_2 pass relies on it."""
import collapse_jax  # noqa: F401  (XLA guards before any computation)
import jax
import pytest

from collapse_jax import precision

jax.config.update("jax_enable_x64", True)


def pytest_runtest_setup(item):
  params = getattr(getattr(item, "callspec", None), "params", {})
  for value in params.values():
    if isinstance(value, str) and value in precision.PRESETS:
      reason = precision.PRESETS[value].unavailable_reason()
      if reason:
        pytest.skip(reason)
