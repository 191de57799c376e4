"""Test configuration: float64 is needed by the `float64` precision preset and the float64
reference comparisons. This is the only global setting made here."""
import jax

jax.config.update("jax_enable_x64", True)
