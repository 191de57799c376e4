"""The paper's appendix-B statements as measurable quantities (Barbero et al., NeurIPS 2024).

One module per topic; every function is a pure function of its arguments (float64
references in numpy or under x64, reduced precisions through the policy's own softmax or
the decoder). Shapes are in the names (``x_ND``, ``scores_RN``, ``J_DND``).

  paper result                                   module         entry points
  Lemma B.1 (inserting a token lowers the        softmax        lemma_b1_sweep
    last token's weight; the gap -> 0)
  Lemma B.2, Figure 9 (softmax distance decays)  softmax        lemma_b2_sweep, lemma_b2_mean_field
  Lemma B.4 (alternating pair: no decay)         softmax        lemma_b4_sweep, B4_LIMIT
  Theorem 5.1 / B.5 (sensitivity <= path sum),   sensitivity    last_token_sensitivity,
    the U-shape of section 5                                    oversquashing_bound,
                                                                sensitivity_vs_bound
  Lemma B.6 / B.7, Proposition 5.2 / B.8         spectral       stochastic_checks,
    (((Lambda + I)/2)^L -> first column of ones)                spectral_convergence,
                                                                layers_to_converge
  Proposition 6.1 / B.9 (ratio invariance        counting       ratio_invariance, b9_sweep
    without PE and causal mask)
  Corollary 6.2 / B.10 (a count must be wrong)   counting       counting_collapse
  all of the above, plus Theorem 4.2 / C.3       scorecard      CHECKS, run, to_markdown
    (sweep.synthetic_collapse_grid), judged
    against criteria fixed before measuring

The experiments (``experiments.softmax_lemmas``, ``oversquashing``, ``counting``,
``scorecard``) and the scorecard's checks build their settings with the same setup
functions (``sensitivity.vector_decoder``, ``counting.b9_models``, ``counting.b10_model``);
an experiment's ``parse`` builds the same configs from its flags (``cli.decoder_config`` with
``sensitivity.vector_fixed``, ``counting.b9_fixed``, ``counting.b10_fixed``, and
``sensitivity.check_bound``) and its ``main`` draws the weights (``init_vector_decoder``,
``b9_models_for``, ``counting.init_params``).
"""
from collapse_jax.theory import counting, scorecard, sensitivity, softmax, spectral

__all__ = ["counting", "scorecard", "sensitivity", "softmax", "spectral"]
