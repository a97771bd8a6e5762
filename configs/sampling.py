"""The `sampling` config section: how `chronoforge_jax.models.sampling.generate` draws answers.

  --config=configs/sampling.py:eval                 # this section alone, greedy settings
  --config.sampling.max_new_tokens=256              # a field, in a config that holds it

Variants: `default` (KF-GRPO rollouts: G = 8 samples at temperature 1.0, up to 768 new
tokens, as Video-R1's recipe in ../shared/PAPER.md), `eval` (greedy, one answer, 512 new
tokens), `smoke` (seconds on a CPU). `sampling_kwargs(section)` turns the section into
`generate` keyword arguments; `chronoforge_jax.models.sampling.SamplingSettings` checks the
fields.

Fields:
  max_new_tokens: answer buffer length T (one compile per value).
  num_samples: G answers per prompt, sharing the prompt's prefill.
  temperature: 0 for greedy decoding.
  top_k: keep the k most likely tokens (0: off).
  top_p: nucleus mass (1.0: off).
  cache_dtype: KV cache dtype name ("" = the model's compute dtype).
"""

from __future__ import annotations

from typing import Any

import ml_collections

from chronoforge_jax.models import sampling
from configs import common

VARIANTS = ("default", "eval", "smoke")


def sampling_config(variant: str = "default") -> ml_collections.ConfigDict:
  """The `sampling` section for `variant` (see VARIANTS)."""
  common.check_choice(variant, "sampling.variant", set(VARIANTS))
  c = ml_collections.ConfigDict()
  c.max_new_tokens = 768
  c.num_samples = 8
  c.temperature = 1.0
  c.top_k = 0
  c.top_p = 1.0
  c.cache_dtype = ""
  if variant == "eval":
    c.max_new_tokens = 512
    c.num_samples = 1
    c.temperature = 0.0
  elif variant == "smoke":
    c.max_new_tokens = 16
    c.num_samples = 4
  return c


def validate(c: Any) -> sampling.SamplingSettings:
  """Builds `sampling.SamplingSettings` from a `sampling` section (ConfigError naming the
  first bad field)."""
  return common.build(sampling.SamplingSettings.from_config, c)


def sampling_kwargs(c: Any) -> dict[str, Any]:
  """Validates a `sampling` section and returns the matching `generate` kwargs."""
  return validate(c).generate_kwargs()


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`--config=configs/sampling.py:VARIANT`: a config holding only the `sampling` section."""
  args = common.parse_arg(arg, variant="default")
  config = ml_collections.ConfigDict()
  config.sampling = sampling_config(args.variant)
  validate(config.sampling)
  return config
