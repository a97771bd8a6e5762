"""TAD, Temporal Apex Distillation: which K frames of a video a model sees.

Modules: `selection` (variation scores, inflection points, prioritized chronological
top-K, the differentiable relaxation, the selector registry) and `features` (cheap
per-frame pixel features TAD scores). The selection API is re-exported here, so
`from chronoforge_jax import tad; tad.select_keyframes(...)` reads as the paper does.
"""

from chronoforge_jax.tad.selection import (
  BOOST_MODES,
  DISTANCES,
  SELECTORS,
  SOFT_METHODS,
  TADOutput,
  TADSettings,
  analyze,
  analyze_defaults,
  inflection_points,
  select,
  select_keyframes,
  soft_select,
  top_k_chronological,
  uniform_select,
  variation_scores,
)

__all__ = [
  "BOOST_MODES",
  "DISTANCES",
  "SELECTORS",
  "SOFT_METHODS",
  "TADOutput",
  "TADSettings",
  "analyze",
  "analyze_defaults",
  "inflection_points",
  "select",
  "select_keyframes",
  "soft_select",
  "top_k_chronological",
  "uniform_select",
  "variation_scores",
]
