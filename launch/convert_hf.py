r"""Converts a local HF Qwen2.5-VL checkpoint into an Orbax params checkpoint.

  python -m launch.convert_hf --hf_dir /models/Qwen2.5-VL-7B-Instruct --out /ckpt/qwen7b
  python -m launch.convert_hf --hf_dir D --out D2 --mesh=1,-1,1 --param_dtype=bfloat16

Writes into --out:
  params/        Orbax params (`checkpoint.save_params`): start training from it with
                 --config.ckpt.init_from=<out>/params
  config.json    the model config (published layout) plus the tokenizer / processor files
                 found in --hf_dir, so <out> also serves as --config.model.hf_dir.
Weights are read tensor by tensor from memory-mapped safetensors and placed directly in
their mesh shardings. Missing, unexpected or mis-shaped tensors stop the conversion with
an error naming them, before anything is written.

The params are written in the layout of a scanned model (`model.scan_layers=True`, the
default): each layer stack's per-layer HF tensors stacked into [L, ...] params
(`--scan_layers=false`: one entry per layer). Either layout loads into a model of either
layout (`chronoforge_jax.train.checkpoint` converts on restore).
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags, logging

_HF_DIR = flags.DEFINE_string(
  "hf_dir", None, "HF checkpoint folder (config.json, *.safetensors, tokenizer files)."
)
_OUT = flags.DEFINE_string("out", None, "Output folder (created; must not hold params/).")
_PARAM_DTYPE = flags.DEFINE_enum(
  "param_dtype", "float32", ["float32", "bfloat16"], "Dtype of the stored params."
)
_MESH = flags.DEFINE_string(
  "mesh",
  "-1,1,1",
  "data,fsdp,tensor mesh sizes to load with "
  "(-1 = the rest); params are placed sharded, never gathered.",
)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing <out>/params.")
_SCAN_LAYERS = flags.DEFINE_bool(
  "scan_layers",
  True,
  "Write layer stacks stacked [L, ...] (a scanned model's layout) or one entry per layer.",
)


def convert(
  hf_dir: str,
  out: str,
  *,
  param_dtype: str = "float32",
  mesh_shape=(-1, 1, 1),
  overwrite: bool = False,
  scan_layers: bool = True,
) -> dict:
  """Loads `hf_dir` onto a mesh and writes `<out>/params` plus config/tokenizer files.

  Args:
    hf_dir: the HF checkpoint folder.
    out: output folder.
    param_dtype: 'float32' or 'bfloat16'.
    mesh_shape: (data, fsdp, tensor) sizes.
    overwrite: replace existing params.
    scan_layers: write the stacked layout of a scanned model (else one entry per layer).

  Returns:
    A summary dict (parameter count, seconds, files written).
  """
  import jax
  import jax.numpy as jnp

  from chronoforge_jax import sharding
  from chronoforge_jax.models import config as model_config
  from chronoforge_jax.models import convert as convert_lib
  from chronoforge_jax.train import checkpoint

  if not os.path.exists(os.path.join(hf_dir, "config.json")):
    raise FileNotFoundError(
      f"--hf_dir={hf_dir!r} has no config.json; point it at a local Qwen2.5-VL checkpoint folder"
    )
  start = time.time()
  mesh = sharding.make_mesh(mesh_shape)
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[param_dtype]
  logging.info("loading %s onto mesh %s", hf_dir, dict(mesh.shape))
  model = convert_lib.load_hf_model(hf_dir, mesh=mesh, param_dtype=dtype, scan_layers=scan_layers)
  params = convert_lib.params_state(model)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  logging.info(
    "loaded %.3fB params in %.1fs; writing Orbax params", n_params / 1e9, time.time() - start
  )
  os.makedirs(out, exist_ok=True)
  checkpoint.save_params(os.path.join(out, "params"), params, overwrite=overwrite)
  with open(os.path.join(out, "config.json"), "w") as f:
    json.dump(model_config.to_hf_config(model.config, dtype=param_dtype), f, indent=2)
  copied = convert_lib.copy_tokenizer_files(hf_dir, out)
  return {
    "params": int(n_params),
    "seconds": time.time() - start,
    "files": ["params/", "config.json"] + copied,
  }


def main(argv):
  del argv
  mesh_shape = [int(s) for s in _MESH.value.split(",")]
  summary = convert(
    _HF_DIR.value,
    _OUT.value,
    param_dtype=_PARAM_DTYPE.value,
    mesh_shape=mesh_shape,
    overwrite=_OVERWRITE.value,
    scan_layers=_SCAN_LAYERS.value,
  )
  print(
    f"wrote {_OUT.value}: {summary['params'] / 1e9:.3f}B params in "
    f"{summary['seconds']:.1f}s ({', '.join(summary['files'])})"
  )
  print(
    f"train from it with --config.ckpt.init_from={os.path.join(_OUT.value, 'params')} "
    f"--config.model.hf_dir={_OUT.value}"
  )


if __name__ == "__main__":
  flags.mark_flags_as_required(["hf_dir", "out"])
  app.run(main)
