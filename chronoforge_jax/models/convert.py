"""Hugging Face Qwen2.5-VL safetensors <-> VideoLanguageModel params.

Public API:

  load_hf_model(path, *, mesh=None, dtype=jnp.float32, param_dtype=jnp.float32,
                remat_policy='none', rules=None, **config_overrides) -> VideoLanguageModel
      Reads config.json and the (sharded) safetensors of a local checkpoint directory.
      Every name and shape is checked against the model before any weight is read;
      missing, unexpected or mis-shaped tensors raise one ValueError naming them all.
      Tensors are read one at a time from memory-mapped files and placed directly with
      their target sharding when a mesh is given (each device reads only its slice), so
      the host never holds two full copies of the model.
  save_hf(model, path, *, dtype=None, max_shard_bytes=4 GiB, tokenizer_dir=None)
      Writes config.json (the published flat layout) and safetensors shards with the
      published tensor names, which transformers (4.5x and 5.x) and vLLM load.
  hf_param_map(config) -> {jax_param_path: (hf_name, transform)}, with per-layer paths
      (`("text", "layers", i, ...)`); a scanned model's stacked param [L, ...] is layer
      i's tensor at row i (`stack.layer_path`), so both layouts load and save alike.
  params_state(model) -> the params as the trainer's nnx.State (what
      `checkpoint.save_params` writes for `launch/convert_hf.py`).

Tensor names: the published layout (`model.layers.*`, `model.embed_tokens`, `visual.*`,
`lm_head`) and the transformers-5 in-memory layout (`model.language_model.*`,
`model.visual.*`) are both accepted on load.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from typing import Any, Iterable

from flax import nnx
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from chronoforge_jax import sharding
from chronoforge_jax.models import stack
from chronoforge_jax.models.config import ModelConfig, from_hf_config, to_hf_config
from chronoforge_jax.models.vlm import VideoLanguageModel

_ST_DTYPES = {
  "F64": np.dtype(np.float64),
  "F32": np.dtype(np.float32),
  "F16": np.dtype(np.float16),
  "BF16": np.dtype(ml_dtypes.bfloat16),
  "I64": np.dtype(np.int64),
  "I32": np.dtype(np.int32),
  "I16": np.dtype(np.int16),
  "I8": np.dtype(np.int8),
  "U8": np.dtype(np.uint8),
  "BOOL": np.dtype(np.bool_),
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}
TOKENIZER_FILES = (
  "tokenizer.json",
  "tokenizer_config.json",
  "vocab.json",
  "merges.txt",
  "special_tokens_map.json",
  "added_tokens.json",
  "chat_template.json",
  "chat_template.jinja",
  "preprocessor_config.json",
  "video_preprocessor_config.json",
  "generation_config.json",
)

# Transforms from the HF tensor to our param: 'T' transposes a Linear weight ([out, in] ->
# [in, out]), 'patch' flattens the Conv3d patch embedding, 'id' copies.
Path = tuple[Any, ...]


def hf_param_map(cfg: ModelConfig) -> dict[Path, tuple[str, str]]:
  """Maps each param path of an unscanned VideoLanguageModel (one entry per layer) to its
  published HF name and transform."""
  out: dict[Path, tuple[str, str]] = {}
  out[("visual", "patch_embed", "kernel")] = ("visual.patch_embed.proj.weight", "patch")
  for i in range(cfg.vision.depth):
    p, h = ("visual", "blocks", i), f"visual.blocks.{i}"
    out[p + ("norm1", "scale")] = (f"{h}.norm1.weight", "id")
    out[p + ("norm2", "scale")] = (f"{h}.norm2.weight", "id")
    for ours, theirs in (
      (("qkv",), "attn.qkv"),
      (("proj",), "attn.proj"),
      (("mlp", "gate"), "mlp.gate_proj"),
      (("mlp", "up"), "mlp.up_proj"),
      (("mlp", "down"), "mlp.down_proj"),
    ):
      out[p + ours + ("kernel",)] = (f"{h}.{theirs}.weight", "T")
      out[p + ours + ("bias",)] = (f"{h}.{theirs}.bias", "id")
  out[("visual", "merger", "norm", "scale")] = ("visual.merger.ln_q.weight", "id")
  for ours, theirs in (("fc1", "mlp.0"), ("fc2", "mlp.2")):
    out[("visual", "merger", ours, "kernel")] = (f"visual.merger.{theirs}.weight", "T")
    out[("visual", "merger", ours, "bias")] = (f"visual.merger.{theirs}.bias", "id")
  out[("text", "embed")] = ("model.embed_tokens.weight", "id")
  for i in range(cfg.text.num_hidden_layers):
    p, h = ("text", "layers", i), f"model.layers.{i}"
    out[p + ("input_norm", "scale")] = (f"{h}.input_layernorm.weight", "id")
    out[p + ("post_norm", "scale")] = (f"{h}.post_attention_layernorm.weight", "id")
    for proj in ("q", "k", "v"):
      out[p + ("attn", proj, "kernel")] = (f"{h}.self_attn.{proj}_proj.weight", "T")
      out[p + ("attn", proj, "bias")] = (f"{h}.self_attn.{proj}_proj.bias", "id")
    out[p + ("attn", "o", "kernel")] = (f"{h}.self_attn.o_proj.weight", "T")
    for proj in ("gate", "up", "down"):
      out[p + ("mlp", proj, "kernel")] = (f"{h}.mlp.{proj}_proj.weight", "T")
  out[("text", "norm", "scale")] = ("model.norm.weight", "id")
  if not cfg.text.tie_word_embeddings:
    out[("text", "lm_head")] = ("lm_head.weight", "T")
  return out


def _alternates(name: str) -> list[str]:
  """The published name first, then the transformers-5 in-memory spelling."""
  if name.startswith("visual."):
    return [name, "model." + name]
  if name.startswith("model."):
    return [name, "model.language_model." + name[len("model.") :]]
  return [name]


def _hf_shape(shape: tuple[int, ...], transform: str, cfg: ModelConfig) -> tuple[int, ...]:
  if transform == "T":
    return tuple(reversed(shape))
  if transform == "patch":
    v = cfg.vision
    return (shape[1], v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
  return tuple(shape)


def _to_ours(x: np.ndarray, transform: str) -> np.ndarray:
  if transform == "T":
    return x.T
  if transform == "patch":
    return x.reshape(x.shape[0], -1).T
  return x


def _to_hf(x: np.ndarray, transform: str, hf_shape: tuple[int, ...]) -> np.ndarray:
  if transform in ("T", "patch"):
    return np.ascontiguousarray(x.T).reshape(hf_shape)
  return x


class SafetensorsReader:
  """Memory-mapped, header-only indexing of a directory's *.safetensors files."""

  def __init__(self, directory: str):
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
      with open(index) as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
    else:
      files = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
    if not files:
      raise FileNotFoundError(f"no *.safetensors files in {directory}")
    self.entries: dict[str, tuple[str, np.dtype, tuple[int, ...], int, int]] = {}
    self._maps: dict[str, np.memmap] = {}
    for fname in files:
      path = os.path.join(directory, fname)
      with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
      header.pop("__metadata__", None)
      for name, info in header.items():
        if info["dtype"] not in _ST_DTYPES:
          raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        self.entries[name] = (
          path,
          _ST_DTYPES[info["dtype"]],
          tuple(info["shape"]),
          8 + n + begin,
          8 + n + end,
        )

  def names(self) -> set[str]:
    return set(self.entries)

  def shape(self, name: str) -> tuple[int, ...]:
    return self.entries[name][2]

  def get(self, name: str) -> np.ndarray:
    path, dtype, shape, begin, end = self.entries[name]
    if path not in self._maps:
      self._maps[path] = np.memmap(path, dtype=np.uint8, mode="r")
    return self._maps[path][begin:end].view(dtype).reshape(shape)


def _flat_params(state) -> list[tuple[Path, nnx.Variable]]:
  return [(tuple(path), v) for path, v in nnx.to_flat_state(state)]


def _layer_slots(path: Path, shape: tuple[int, ...]) -> list[tuple[Path, int | None]]:
  """The per-layer paths (`hf_param_map` keys) a param holds, each with its row.

  A stacked param [L, ...] of a scanned model holds L layers (rows 0..L-1); any other
  param holds itself (row None).
  """
  parts = stack.split_path(path)
  if parts is None or parts[1] is not None:
    return [(path, None)]
  return [(stack.layer_path(path, i), i) for i in range(shape[0])]


def load_hf_model(
  path: str,
  *,
  mesh=None,
  dtype=jnp.float32,
  param_dtype=jnp.float32,
  remat_policy: str = "none",
  rules=None,
  attention_impl: str = "xla",
  scan_layers: bool = True,
  **config_overrides: Any,
) -> VideoLanguageModel:
  """Loads a local HF Qwen2.5-VL checkpoint directory into a VideoLanguageModel.

  Args:
    path: directory with config.json and *.safetensors (sharded or not).
    mesh: place each param with its logical sharding on this mesh (None: default
      device).
    dtype: compute dtype.
    param_dtype: storage dtype of the params (e.g. float32 master weights).
    remat_policy: see `vision.remat_policy_fn`.
    attention_impl: the decoder's attention, see `layers.attention`.
    rules: logical axis rules (default `sharding.current_rules()`).
    scan_layers: build the model with stacked, scanned layers (per-layer HF tensors are
      stacked on load) or one module per layer.
    **config_overrides: ModelConfig fields not in config.json
      (e.g. text_position_after_video='spatial').

  Returns:
    The model with the checkpoint's weights.
  """
  with open(os.path.join(path, "config.json")) as f:
    cfg = from_hf_config(json.load(f), **config_overrides)
  abstract = nnx.eval_shape(
    lambda: VideoLanguageModel(
      cfg,
      rngs=nnx.Rngs(0),
      dtype=dtype,
      param_dtype=param_dtype,
      remat_policy=remat_policy,
      attention_impl=attention_impl,
      scan_layers=scan_layers,
    )
  )
  graphdef, state = nnx.split(abstract)
  reader = SafetensorsReader(path)
  mapping = hf_param_map(cfg)
  available = reader.names()

  # Check every name and shape before reading any data.
  plan, missing, misshaped, consumed = [], [], [], set()
  for p, var in _flat_params(state):
    shape = tuple(var.get_value().shape)
    slots, names, transform = _layer_slots(p, shape), [], None
    for layer_p, row in slots:
      if layer_p not in mapping:
        raise AssertionError(f"no HF name for param {layer_p}; hf_param_map is out of date")
      hf_name, transform = mapping[layer_p]
      found = next((n for n in _alternates(hf_name) if n in available), None)
      if found is None:
        missing.append(hf_name)
        continue
      consumed.add(found)
      want = _hf_shape(shape if row is None else shape[1:], transform, cfg)
      if reader.shape(found) != want:
        misshaped.append(f"{found}: checkpoint {reader.shape(found)}, model expects {want}")
        continue
      names.append(found)
    if len(names) == len(slots):
      plan.append((p, var, names, transform, shape, slots[0][1] is not None))
  ignorable = {n for n in available if n.endswith("inv_freq")}
  if cfg.text.tie_word_embeddings:
    ignorable |= {"lm_head.weight"}
  unexpected = sorted(available - consumed - ignorable)
  if missing or unexpected or misshaped:
    lines = [f"checkpoint {path} does not match the model config:"]
    for title, items in (
      ("missing", missing),
      ("unexpected", unexpected),
      ("mis-shaped", misshaped),
    ):
      if items:
        lines.append(
          f"  {title} ({len(items)}): "
          + ", ".join(items[:20])
          + (" ..." if len(items) > 20 else "")
        )
    raise ValueError("\n".join(lines))

  shardings = (
    dict(_flat_params(sharding.state_shardings(state, mesh, rules))) if mesh is not None else {}
  )
  np_dtype = np.dtype(param_dtype)

  def read(names, transform, stacked, idx=()):
    """The host block `idx` of a param: stacked params read only the layers in it."""
    if not stacked:
      return np.asarray(_to_ours(reader.get(names[0]), transform)[idx], dtype=np_dtype)
    rows, rest = (idx[0], idx[1:]) if idx else (slice(None), ())
    return np.stack(
      [np.asarray(_to_ours(reader.get(n), transform)[rest], dtype=np_dtype) for n in names[rows]]
    )

  for p, var, names, transform, shape, stacked in plan:
    if mesh is not None:
      target = shardings[p].get_value()
      value = jax.make_array_from_callback(
        shape, target, lambda idx, args=(names, transform, stacked): read(*args, idx)
      )
    else:
      value = jax.device_put(read(names, transform, stacked))
    var.set_value(value)
  return nnx.merge(graphdef, state)


def _write_safetensors(
  path: str, tensors: list[tuple[str, tuple[int, ...], np.dtype]], produce
) -> None:
  """Streams tensors into one safetensors file; `produce(name)` returns each array."""
  header, offset = {}, 0
  for name, shape, dtype in tensors:
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    header[name] = {
      "dtype": _ST_NAMES[dtype],
      "shape": list(shape),
      "data_offsets": [offset, offset + size],
    }
    offset += size
  header["__metadata__"] = {"format": "pt"}
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)
  tmp = path + ".tmp"  # Renamed when complete: a killed export never leaves a torn file.
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for name, shape, dtype in tensors:
      arr = np.ascontiguousarray(produce(name), dtype=dtype)
      if arr.shape != tuple(shape):
        raise AssertionError(f"{name}: produced {arr.shape}, header says {shape}")
      f.write(arr.tobytes())
  os.replace(tmp, path)


def save_hf(
  model: VideoLanguageModel,
  path: str,
  *,
  dtype=None,
  max_shard_bytes: int = 4 << 30,
  tokenizer_dir: str | None = None,
) -> None:
  """Exports the model as an HF Qwen2.5-VL checkpoint directory.

  Multi-host: every process calls it; each param is gathered to every host in turn
  (one tensor in host memory at a time) and process 0 writes.

  Args:
    model: the model (sharded over any mesh, one or several processes).
    path: output directory (created).
    dtype: storage dtype (default: each param's own dtype).
    max_shard_bytes: start a new safetensors file past this size.
    tokenizer_dir: copy tokenizer / processor files from this directory, if given.
  """
  cfg = model.config
  writer = jax.process_index() == 0
  if writer:
    os.makedirs(path, exist_ok=True)
  mapping = hf_param_map(cfg)
  # Per-layer path -> (param, row): a scanned model's stacked params hold L layers.
  slots = {}
  for p, var in _flat_params(nnx.state(model, nnx.Param)):
    for layer_p, row in _layer_slots(p, tuple(var.get_value().shape)):
      slots[layer_p] = (var, row)
  entries = []
  for p, (hf_name, transform) in mapping.items():
    var, row = slots[p]
    value = var.get_value()
    shape = tuple(value.shape) if row is None else tuple(value.shape[1:])
    out_dtype = np.dtype(dtype) if dtype is not None else np.dtype(value.dtype)
    entries.append((hf_name, _hf_shape(shape, transform, cfg), out_dtype, p, transform))
  files, current, size = [], [], 0
  for e in entries:
    nbytes = int(np.prod(e[1], dtype=np.int64)) * e[2].itemsize
    if current and size + nbytes > max_shard_bytes:
      files.append(current)
      current, size = [], 0
    current.append(e)
    size += nbytes
  files.append(current)
  by_name = {e[0]: e for e in entries}

  def produce(name):
    _, hf_shape, _, p, transform = by_name[name]
    var, row = slots[p]
    value = var.get_value() if row is None else var.get_value()[row]  # one layer on device
    if value.is_fully_addressable:
      host = np.asarray(jax.device_get(value))
    else:  # A collective: every process gathers the same tensors in the same order.
      from jax.experimental import multihost_utils

      host = np.asarray(multihost_utils.process_allgather(value, tiled=True))
    return _to_hf(host, transform, hf_shape)

  if not writer:
    for group in files:
      for e in group:
        produce(e[0])
    return
  weight_map = {}
  for i, group in enumerate(files):
    fname = (
      "model.safetensors"
      if len(files) == 1
      else f"model-{i + 1:05d}-of-{len(files):05d}.safetensors"
    )
    _write_safetensors(os.path.join(path, fname), [(e[0], e[1], e[2]) for e in group], produce)
    weight_map.update({e[0]: fname for e in group})
  if len(files) > 1:
    total = sum(int(np.prod(e[1], dtype=np.int64)) * e[2].itemsize for e in entries)
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
  dtype_name = {
    np.dtype(np.float32): "float32",
    np.dtype(ml_dtypes.bfloat16): "bfloat16",
    np.dtype(np.float16): "float16",
  }.get(entries[0][2], "float32")
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(to_hf_config(cfg, dtype=dtype_name), f, indent=2)
  if tokenizer_dir:
    copy_tokenizer_files(tokenizer_dir, path)


def copy_tokenizer_files(src: str, dst: str, names: Iterable[str] = TOKENIZER_FILES) -> list[str]:
  """Copies the tokenizer / processor files that exist in `src` to `dst`; returns them."""
  copied = []
  for name in names:
    if os.path.exists(os.path.join(src, name)):
      shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
      copied.append(name)
  return copied


def params_state(model: VideoLanguageModel) -> nnx.State:
  """The model's params as the nnx.State the trainer holds (`nnx.split(model, nnx.Param)`),
  which is what `checkpoint.save_params` writes for `launch/convert_hf.py` and what
  `checkpoint.load_params` restores into the trainer's abstract params."""
  return nnx.split(model, nnx.Param)[1]
