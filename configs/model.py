r"""The `model` config section: which VLM, in which precision, with which remat policy.

Training configs embed it as `config.model = model.get_config(variant)`; fields are set on
the command line, e.g.

  python -m launch.train --config=configs/kf_grpo.py \
      --config.model.hf_dir=/models/Qwen2.5-VL-7B-Instruct \
      --config.model.remat_policy=full --config.ckpt.init_from=/ckpt/qwen7b/params

and `chronoforge_jax.models.create_model(config.model, rngs=...)` builds the model. The
fields are checked by `chronoforge_jax.models.ModelSettings` (choices come from the
library: presets, dtypes, remat policies, attention implementations).

Fields:
  preset: a `chronoforge_jax.models.config` preset (tiny, small, qwen2_5_vl_3b, qwen2_5_vl_7b,
    qwen2_5_vl_32b, qwen2_5_vl_72b); ignored when `hf_dir` is set.
  hf_dir: a local HF checkpoint folder; its config.json defines the model ("" for none).
  match_tokenizer: take the vocabulary size and special token ids from the tokenizer
    (needed for the tiny synthetic-set tokenizer).
  dtype: compute dtype (bfloat16 on accelerators, float32 for CPU smoke runs).
  param_dtype: storage dtype of the params (float32 master weights by default).
  remat_policy: none | full | dots | dots_no_batch (what each layer saves for backward).
  attention_impl: the decoder's attention: "xla" (one [B, H, S, S] logits tensor per
    layer), "chunked" (query blocks of `attention_chunk` rows, recomputed in the backward
    pass: long video prompts at a fraction of the memory; any backend), "cudnn" (cuDNN
    flash attention, NVIDIA GPUs), "splash" (the Pallas splash flash-attention kernel,
    TPUs; an error on other targets) or "splash_interpret" (the same kernel in Pallas
    interpret mode on any backend: slow, for tests). All compute the same function on real
    tokens; splash serves the full-sequence and prefill passes, KV-cache decode uses "xla".
  attention_chunk: query rows per block with attention_impl="chunked".
  scan_layers: True (default): each layer stack (decoder layers, vision blocks) keeps its
    params stacked [L, ...] and runs as one `nnx.scan`, so compile time does not grow
    with depth. False: one module per layer, unrolled by a Python loop (for debugging;
    its checkpoints name layers one by one, and `ckpt.init_from` loads either layout).
  text_position_after_video: "" (checkpoint default, 'max': Qwen's rule), 'max' or
    'spatial' (transformers >= 5.3); see ModelConfig.text_position_after_video.
  vocab_chunk: vocabulary columns per step of the chunked log-softmax (token_logprobs).
"""

from __future__ import annotations

import ml_collections

from chronoforge_jax import models
from configs import common

VARIANTS = ("default", "smoke", "small")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the `model` section.

  Args:
    arg: "" / "default" (Qwen2.5-VL-7B, bf16 compute, f32 params, dots_no_batch remat),
      "smoke" (the tiny preset in float32, no remat: seconds on a CPU) or "small" (the
      small preset in float32: the demo's model, learns the synthetic set on a CPU).

  Returns:
    A locked ConfigDict with the fields in the module docstring.
  """
  args = common.parse_arg(arg, variant="default")
  common.check_choice(args.variant, "model variant", VARIANTS)
  config = ml_collections.ConfigDict()
  config.preset = "qwen2_5_vl_7b"
  config.hf_dir = ""
  config.match_tokenizer = False
  config.dtype = "bfloat16"
  config.param_dtype = "float32"
  config.remat_policy = "dots_no_batch"
  config.attention_impl = "xla"
  config.attention_chunk = 512
  config.scan_layers = True
  config.text_position_after_video = ""
  config.vocab_chunk = 8192
  if args.variant in ("smoke", "small"):
    config.preset = args.variant if args.variant == "small" else "tiny"
    config.match_tokenizer = True
    config.dtype = "float32"
    config.remat_policy = "none"
    config.vocab_chunk = 64 if args.variant == "smoke" else 512
  validate(config)
  config.lock()
  return config


def validate(config: ml_collections.ConfigDict) -> models.ModelSettings:
  """Builds `models.ModelSettings` from the section; raises ConfigError naming the field."""
  return common.build(models.ModelSettings.from_config, config)
