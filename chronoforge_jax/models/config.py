"""Frozen model configs for the Qwen2.5-VL-architecture video-language model, and presets.

Public interface (other modules and tests import these names):

  VisionConfig, TextConfig, ModelConfig   keyword-only frozen dataclasses, validated in
                                           `__post_init__` (a bad field raises ValueError
                                           naming the field and the fix).
  PRESETS / get_preset(name)               'tiny' (tests; odd/prime sizes), 'small' (the
                                           demo: learns the synthetic task on a CPU),
                                           'qwen2_5_vl_3b',
                                           'qwen2_5_vl_7b', 'qwen2_5_vl_32b', 'qwen2_5_vl_72b'.
  from_hf_config(dict) / to_hf_config(cfg) a checkpoint's config.json <-> ModelConfig, for
                                           both the published (flat) layout and the
                                           transformers-5 (nested `text_config`) layout.

Every architectural constant (token ids, `tokens_per_second`, window size, full-attention
block indices, mrope sections, ...) is a field here and comes from the checkpoint's
config.json; code never hard-codes them. The published presets are transcribed from the
config.json files of Qwen/Qwen2.5-VL-{3B,7B,32B,72B}-Instruct.

One field is not in config.json: `text_position_after_video`, which picks between the two
conventions for the M-RoPE position of text that follows a video (see ModelConfig).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

_ACTIVATIONS = ("silu", "gelu", "gelu_pytorch_tanh", "relu")
TEXT_AFTER_VIDEO = ("max", "spatial")


def _require(cond: bool, field: str, message: str) -> None:
  if not cond:
    raise ValueError(f"model config field {field!r}: {message}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class VisionConfig:
  """The ViT tower (`visual.*` in HF checkpoints).

  Attributes:
    depth: number of transformer blocks.
    hidden_size: tower width.
    intermediate_size: SwiGLU hidden width of each block's MLP.
    num_heads: attention heads (head dim = hidden_size / num_heads, multiple of 4 for
      the 2D rotary embedding).
    in_channels: image channels (3).
    patch_size: spatial patch size in pixels (14).
    temporal_patch_size: frames per temporal patch (2).
    spatial_merge_size: side of the square of patches merged into one LLM token (2).
    window_size: window attention side in pixels (112 -> 4x4 merged tokens).
    out_hidden_size: merger output width; must equal the text hidden size.
    fullatt_block_indexes: blocks that use full (per temporal patch) attention; all the
      others use window attention.
    tokens_per_second: temporal M-RoPE ids per second of video (2 in the published
      checkpoints; transformers' config class defaults to 4, so it must come from the
      checkpoint).
    hidden_act: MLP activation.
    rope_theta: base of the 2D rotary embedding.
    rms_norm_eps: epsilon of the tower's RMSNorms (1e-6, fixed in the reference code).
  """

  depth: int
  hidden_size: int
  intermediate_size: int
  num_heads: int
  in_channels: int = 3
  patch_size: int = 14
  temporal_patch_size: int = 2
  spatial_merge_size: int = 2
  window_size: int = 112
  out_hidden_size: int
  fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
  tokens_per_second: float = 2
  hidden_act: str = "silu"
  rope_theta: float = 10000.0
  rms_norm_eps: float = 1e-6

  def __post_init__(self):
    object.__setattr__(
      self, "fullatt_block_indexes", tuple(int(i) for i in self.fullatt_block_indexes)
    )
    for name in (
      "depth",
      "hidden_size",
      "intermediate_size",
      "num_heads",
      "in_channels",
      "patch_size",
      "temporal_patch_size",
      "spatial_merge_size",
      "window_size",
      "out_hidden_size",
    ):
      _require(
        isinstance(getattr(self, name), int) and getattr(self, name) > 0,
        f"vision.{name}",
        f"must be a positive int, got {getattr(self, name)!r}",
      )
    _require(
      self.hidden_size % self.num_heads == 0,
      "vision.hidden_size",
      f"{self.hidden_size} is not divisible by num_heads={self.num_heads}",
    )
    _require(
      self.head_dim % 4 == 0,
      "vision.num_heads",
      f"head dim {self.head_dim} must be a multiple of 4 for the 2D rotary embedding",
    )
    _require(
      self.window_size // (self.spatial_merge_size * self.patch_size) >= 1,
      "vision.window_size",
      f"{self.window_size} px is smaller than one merged token "
      f"({self.spatial_merge_size * self.patch_size} px)",
    )
    for i in self.fullatt_block_indexes:
      _require(
        0 <= i < self.depth,
        "vision.fullatt_block_indexes",
        f"index {i} is outside [0, depth={self.depth})",
      )
    _require(self.tokens_per_second > 0, "vision.tokens_per_second", "must be > 0")
    _require(
      self.hidden_act in _ACTIVATIONS,
      "vision.hidden_act",
      f"got {self.hidden_act!r}; choose one of {_ACTIVATIONS}",
    )

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def patch_dim(self) -> int:
    """Length of one flattened pixel patch: channels * temporal_patch * patch * patch."""
    return self.in_channels * self.temporal_patch_size * self.patch_size**2

  @property
  def window_merged(self) -> int:
    """Window side in merged (LLM) tokens, as the reference computes it."""
    return self.window_size // self.spatial_merge_size // self.patch_size


@dataclasses.dataclass(frozen=True, kw_only=True)
class TextConfig:
  """The Qwen2-style decoder (`model.layers.*`, `model.embed_tokens`, `lm_head`).

  Attributes:
    vocab_size: rows of the embedding / columns of the LM head.
    hidden_size: model width.
    intermediate_size: SwiGLU hidden width.
    num_hidden_layers: decoder layers.
    num_attention_heads: query heads.
    num_key_value_heads: key/value heads (grouped-query attention).
    rms_norm_eps: RMSNorm epsilon.
    rope_theta: rotary base.
    mrope_section: rotary frequency pairs given to (time, height, width); sums to
      head_dim / 2.
    max_position_embeddings: informational (the rotary embedding has no table).
    hidden_act: MLP activation.
    tie_word_embeddings: LM head shares the embedding matrix (3B) or not (7B+).
  """

  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_hidden_layers: int
  num_attention_heads: int
  num_key_value_heads: int
  rms_norm_eps: float = 1e-6
  rope_theta: float = 1000000.0
  mrope_section: tuple[int, int, int] = (16, 24, 24)
  max_position_embeddings: int = 128000
  hidden_act: str = "silu"
  tie_word_embeddings: bool = False

  def __post_init__(self):
    object.__setattr__(self, "mrope_section", tuple(int(s) for s in self.mrope_section))
    for name in (
      "vocab_size",
      "hidden_size",
      "intermediate_size",
      "num_hidden_layers",
      "num_attention_heads",
      "num_key_value_heads",
    ):
      _require(
        isinstance(getattr(self, name), int) and getattr(self, name) > 0,
        f"text.{name}",
        f"must be a positive int, got {getattr(self, name)!r}",
      )
    _require(
      self.hidden_size % self.num_attention_heads == 0,
      "text.hidden_size",
      f"{self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}",
    )
    _require(
      self.num_attention_heads % self.num_key_value_heads == 0,
      "text.num_key_value_heads",
      f"{self.num_key_value_heads} does not divide num_attention_heads={self.num_attention_heads}",
    )
    _require(
      self.head_dim % 2 == 0,
      "text.num_attention_heads",
      f"head dim {self.head_dim} must be even for rotary embeddings",
    )
    _require(
      len(self.mrope_section) == 3 and min(self.mrope_section) >= 0,
      "text.mrope_section",
      f"need 3 non-negative ints, got {self.mrope_section}",
    )
    _require(
      sum(self.mrope_section) == self.head_dim // 2,
      "text.mrope_section",
      f"{self.mrope_section} sums to {sum(self.mrope_section)}, but head_dim/2 = "
      f"{self.head_dim // 2}",
    )
    _require(
      self.hidden_act in _ACTIVATIONS,
      "text.hidden_act",
      f"got {self.hidden_act!r}; choose one of {_ACTIVATIONS}",
    )
    _require(self.rms_norm_eps > 0, "text.rms_norm_eps", "must be > 0")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
  """The whole VLM: towers plus the special token ids.

  Attributes:
    vision: the ViT tower.
    text: the decoder.
    image_token_id, video_token_id, vision_start_token_id, vision_end_token_id: special
      token ids from config.json (video placeholders are `video_token_id`).
    bos_token_id, eos_token_id, pad_token_id: from config.json (eos may be a tuple).
    text_position_after_video: where M-RoPE positions resume after a video.
      'max': at 1 + the largest position id of the video over its three axes (Qwen's
        original code, transformers <= 5.2, vLLM; what the published checkpoints were
        trained with). Default.
      'spatial': at start + max(grid_h, grid_w) / merge, ignoring the temporal ids
        (transformers >= 5.3, including the 5.24 the parity tests run against).
      The two agree whenever the temporal ids do not exceed the spatial ones.
  """

  vision: VisionConfig
  text: TextConfig
  image_token_id: int = 151655
  video_token_id: int = 151656
  vision_start_token_id: int = 151652
  vision_end_token_id: int = 151653
  bos_token_id: int | None = 151643
  eos_token_id: int | tuple[int, ...] | None = 151645
  pad_token_id: int | None = None
  text_position_after_video: str = "max"

  def __post_init__(self):
    if isinstance(self.eos_token_id, list):
      object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
    _require(
      self.vision.out_hidden_size == self.text.hidden_size,
      "vision.out_hidden_size",
      f"{self.vision.out_hidden_size} must equal text.hidden_size="
      f"{self.text.hidden_size} (the merger feeds the decoder)",
    )
    for name in (
      "image_token_id",
      "video_token_id",
      "vision_start_token_id",
      "vision_end_token_id",
    ):
      value = getattr(self, name)
      _require(
        isinstance(value, int) and 0 <= value < self.text.vocab_size,
        name,
        f"{value!r} is not a token id in [0, vocab_size={self.text.vocab_size})",
      )
    _require(
      self.text_position_after_video in TEXT_AFTER_VIDEO,
      "text_position_after_video",
      f"got {self.text_position_after_video!r}; choose one of {TEXT_AFTER_VIDEO}",
    )

  @property
  def eos_token_ids(self) -> tuple[int, ...]:
    if self.eos_token_id is None:
      return ()
    if isinstance(self.eos_token_id, int):
      return (self.eos_token_id,)
    return tuple(self.eos_token_id)

  def replace(self, **changes: Any) -> ModelConfig:
    return dataclasses.replace(self, **changes)


# ------------------------------------------------------------------------------------
# Presets. The published ones are transcribed from each checkpoint's config.json.
# ------------------------------------------------------------------------------------

_QWEN_IDS = dict(
  image_token_id=151655,
  video_token_id=151656,
  vision_start_token_id=151652,
  vision_end_token_id=151653,
  bos_token_id=151643,
  eos_token_id=151645,
)


def _qwen_vision(out_hidden_size: int, intermediate_size: int) -> VisionConfig:
  return VisionConfig(
    depth=32,
    hidden_size=1280,
    intermediate_size=intermediate_size,
    num_heads=16,
    out_hidden_size=out_hidden_size,
    window_size=112,
    fullatt_block_indexes=(7, 15, 23, 31),
    tokens_per_second=2,
  )


def _qwen(vocab, hidden, inter, layers, heads, kv, tie, vision_inter) -> ModelConfig:
  text = TextConfig(
    vocab_size=vocab,
    hidden_size=hidden,
    intermediate_size=inter,
    num_hidden_layers=layers,
    num_attention_heads=heads,
    num_key_value_heads=kv,
    rms_norm_eps=1e-6,
    rope_theta=1000000.0,
    mrope_section=(16, 24, 24),
    max_position_embeddings=128000,
    tie_word_embeddings=tie,
  )
  return ModelConfig(vision=_qwen_vision(hidden, vision_inter), text=text, **_QWEN_IDS)


def _tiny() -> ModelConfig:
  # Odd and prime sizes so that a transposed or mis-reshaped weight cannot go unnoticed.
  vision = VisionConfig(
    depth=3,
    hidden_size=40,
    intermediate_size=29,
    num_heads=2,
    out_hidden_size=36,
    window_size=56,
    fullatt_block_indexes=(1,),
    tokens_per_second=2,
  )
  text = TextConfig(
    vocab_size=151,
    hidden_size=36,
    intermediate_size=53,
    num_hidden_layers=3,
    num_attention_heads=3,
    num_key_value_heads=1,
    mrope_section=(2, 2, 2),
    max_position_embeddings=2048,
  )
  return ModelConfig(
    vision=vision,
    text=text,
    image_token_id=144,
    video_token_id=145,
    vision_start_token_id=146,
    vision_end_token_id=147,
    bos_token_id=148,
    eos_token_id=149,
    pad_token_id=150,
  )


def _small() -> ModelConfig:
  # Sized to learn the synthetic colour-order task on a CPU in minutes (about 1.2M
  # params): the tiny preset (width 36) stays near the letter prior on it.
  vision = VisionConfig(
    depth=2,
    hidden_size=64,
    intermediate_size=128,
    num_heads=2,
    out_hidden_size=128,
    window_size=56,
    fullatt_block_indexes=(1,),
    tokens_per_second=2,
  )
  text = TextConfig(
    vocab_size=512,
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    mrope_section=(8, 4, 4),
    max_position_embeddings=2048,
  )
  return ModelConfig(
    vision=vision,
    text=text,
    image_token_id=505,
    video_token_id=506,
    vision_start_token_id=507,
    vision_end_token_id=508,
    bos_token_id=509,
    eos_token_id=510,
    pad_token_id=511,
  )


PRESETS = {
  "tiny": _tiny,
  "small": _small,
  "qwen2_5_vl_3b": lambda: _qwen(151936, 2048, 11008, 36, 16, 2, True, 3420),
  "qwen2_5_vl_7b": lambda: _qwen(152064, 3584, 18944, 28, 28, 4, False, 3420),
  "qwen2_5_vl_32b": lambda: _qwen(152064, 5120, 27648, 64, 40, 8, False, 3456),
  "qwen2_5_vl_72b": lambda: _qwen(152064, 8192, 29568, 80, 64, 8, False, 3456),
}


def get_preset(name: str) -> ModelConfig:
  """Returns the ModelConfig preset `name` (see PRESETS)."""
  if name not in PRESETS:
    raise KeyError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
  return PRESETS[name]()


# ------------------------------------------------------------------------------------
# config.json <-> ModelConfig
# ------------------------------------------------------------------------------------


def _get(d: Mapping[str, Any], *keys: str, default: Any = dataclasses.MISSING) -> Any:
  for key in keys:
    if key in d and d[key] is not None:
      return d[key]
  if default is dataclasses.MISSING:
    raise ValueError(f"config.json lacks {' / '.join(keys)}; is this a Qwen2.5-VL checkpoint?")
  return default


def from_hf_config(hf: Mapping[str, Any], **overrides: Any) -> ModelConfig:
  """Builds a ModelConfig from a Qwen2.5-VL config.json dict.

  Accepts the published layout (decoder fields at the top level, `rope_scaling`) and the
  transformers-5 layout (decoder fields under `text_config`, `rope_parameters`).

  Args:
    hf: the parsed config.json.
    **overrides: ModelConfig fields to set that config.json does not carry
      (e.g. `text_position_after_video`).

  Returns:
    The ModelConfig.
  """
  model_type = hf.get("model_type", "qwen2_5_vl")
  if model_type != "qwen2_5_vl":
    raise ValueError(f"config.json model_type is {model_type!r}; expected 'qwen2_5_vl'")
  t = dict(hf)
  if isinstance(hf.get("text_config"), Mapping):
    t.update({k: v for k, v in hf["text_config"].items() if v is not None})
  rope = _get(t, "rope_parameters", "rope_scaling", default={}) or {}
  if t.get("use_sliding_window"):
    raise ValueError(
      "config.json sets use_sliding_window=true; sliding-window attention is "
      "not implemented (no published Qwen2.5-VL checkpoint uses it)"
    )
  text = TextConfig(
    vocab_size=int(_get(t, "vocab_size")),
    hidden_size=int(_get(t, "hidden_size")),
    intermediate_size=int(_get(t, "intermediate_size")),
    num_hidden_layers=int(_get(t, "num_hidden_layers")),
    num_attention_heads=int(_get(t, "num_attention_heads")),
    num_key_value_heads=int(_get(t, "num_key_value_heads", "num_attention_heads")),
    rms_norm_eps=float(_get(t, "rms_norm_eps", default=1e-6)),
    rope_theta=float(rope.get("rope_theta") or _get(t, "rope_theta", default=1000000.0)),
    mrope_section=tuple(_get(rope, "mrope_section", default=(16, 24, 24))),
    max_position_embeddings=int(_get(t, "max_position_embeddings", default=128000)),
    hidden_act=str(_get(t, "hidden_act", default="silu")),
    tie_word_embeddings=bool(hf.get("tie_word_embeddings") or t.get("tie_word_embeddings")),
  )
  v = hf.get("vision_config") or {}
  vrope = v.get("rope_parameters") or {}
  vision = VisionConfig(
    depth=int(_get(v, "depth", "num_hidden_layers")),
    hidden_size=int(_get(v, "hidden_size", "embed_dim")),
    intermediate_size=int(_get(v, "intermediate_size")),
    num_heads=int(_get(v, "num_heads", "num_attention_heads")),
    in_channels=int(_get(v, "in_channels", "in_chans", default=3)),
    patch_size=int(_get(v, "patch_size", "spatial_patch_size", default=14)),
    temporal_patch_size=int(_get(v, "temporal_patch_size", default=2)),
    spatial_merge_size=int(_get(v, "spatial_merge_size", default=2)),
    window_size=int(_get(v, "window_size", default=112)),
    out_hidden_size=int(_get(v, "out_hidden_size", default=text.hidden_size)),
    fullatt_block_indexes=tuple(_get(v, "fullatt_block_indexes", default=(7, 15, 23, 31))),
    # transformers' class default is 4; the published checkpoints say 2. A config.json
    # without the field is taken at the class default, as transformers would.
    tokens_per_second=_get(v, "tokens_per_second", default=4),
    hidden_act=str(_get(v, "hidden_act", default="silu")),
    rope_theta=float(vrope.get("rope_theta") or 10000.0),
  )
  ids = {}
  for name in (
    "image_token_id",
    "video_token_id",
    "vision_start_token_id",
    "vision_end_token_id",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
  ):
    value = hf.get(name, t.get(name))
    if value is not None:
      ids[name] = tuple(value) if isinstance(value, list) else value
  ids.update(overrides)
  return ModelConfig(vision=vision, text=text, **ids)


def to_hf_config(cfg: ModelConfig, *, dtype: str = "float32") -> dict[str, Any]:
  """Writes a config.json dict in the published (flat) Qwen2.5-VL layout.

  Both transformers 4.5x and 5.x and vLLM read this layout.

  Args:
    cfg: the model config.
    dtype: the weights' dtype name, recorded as `torch_dtype`.

  Returns:
    A JSON-serialisable dict.
  """
  t, v = cfg.text, cfg.vision
  out = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "model_type": "qwen2_5_vl",
    "torch_dtype": dtype,
    "vocab_size": t.vocab_size,
    "hidden_size": t.hidden_size,
    "intermediate_size": t.intermediate_size,
    "num_hidden_layers": t.num_hidden_layers,
    "num_attention_heads": t.num_attention_heads,
    "num_key_value_heads": t.num_key_value_heads,
    "hidden_act": t.hidden_act,
    "rms_norm_eps": t.rms_norm_eps,
    "rope_theta": t.rope_theta,
    "rope_scaling": {"type": "mrope", "mrope_section": list(t.mrope_section)},
    "max_position_embeddings": t.max_position_embeddings,
    "max_window_layers": t.num_hidden_layers,
    "use_sliding_window": False,
    "sliding_window": t.max_position_embeddings,
    "attention_dropout": 0.0,
    "tie_word_embeddings": t.tie_word_embeddings,
    "use_cache": True,
    "image_token_id": cfg.image_token_id,
    "video_token_id": cfg.video_token_id,
    "vision_start_token_id": cfg.vision_start_token_id,
    "vision_end_token_id": cfg.vision_end_token_id,
    "bos_token_id": cfg.bos_token_id,
    "eos_token_id": (
      list(cfg.eos_token_id) if isinstance(cfg.eos_token_id, tuple) else cfg.eos_token_id
    ),
    "vision_config": {
      "depth": v.depth,
      "hidden_size": v.hidden_size,
      "intermediate_size": v.intermediate_size,
      "num_heads": v.num_heads,
      "in_chans": v.in_channels,
      "in_channels": v.in_channels,
      "out_hidden_size": v.out_hidden_size,
      "patch_size": v.patch_size,
      "spatial_patch_size": v.patch_size,
      "temporal_patch_size": v.temporal_patch_size,
      "spatial_merge_size": v.spatial_merge_size,
      "window_size": v.window_size,
      "fullatt_block_indexes": list(v.fullatt_block_indexes),
      "tokens_per_second": v.tokens_per_second,
      "hidden_act": v.hidden_act,
      "rope_parameters": {"rope_type": "axial", "rope_theta": v.rope_theta},
    },
  }
  if cfg.pad_token_id is not None:
    out["pad_token_id"] = cfg.pad_token_id
  return out
