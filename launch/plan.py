r"""Plans the per-device memory of a training config; with --compile, proves it on a TPU slice.

Quick plan (abstract shapes, seconds, allocates nothing):

  python -m launch.plan --config=configs/kf_grpo.py:qwen2_5_vl_7b --cpu_devices=64 \
      --config.mesh.fsdp=-1 [--frame_size 448] [--tokenizer_dir DIR]

Params (vision, text), optimizer state, the frozen reference (beta > 0) and one rollout's
KV cache, each as elements, bytes over all devices and bytes on the most loaded device,
from abstract shapes and the config's shardings (chronoforge_jax/train/planning.py). Fake the
target's device count with --cpu_devices (or give --topology) to plan a pod from a laptop.
Activations are not in it.

Compiled plan (needs libtpu, `pip install -e '.[tpu]'`; no TPU is used):

  python -m launch.plan --config=configs/kf_grpo.py:qwen2_5_vl_7b_v5p16 \
      --topology=v5p-16 --compile

compiles every program of a KF-GRPO step (SFT step, views, sampler for each view,
log-probs, GRPO step) for the slice at the config's real shapes and prints, per program,
XLA's per-chip HBM (arguments, outputs, temps, code, peak) against the chip's HBM, FLOPs,
the compiler's time estimate and the compile time. The last line is exactly one of

  fits: peak X GiB of Y GiB per chip on NAME                      (exit status 0)
  does not fit: peak X GiB of Y GiB per chip on NAME (program P)  (exit status 1)

Slices are named as Cloud TPU names them: v5p-N and v4-N count TensorCores (v5p-16 is 8
chips), v5e-N and v6e-N count chips. HBM per chip: v5p 95 GiB, v5e 16, v6e 32, v4 32
(--hbm_gib overrides it).
"""

import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Training config file, e.g. configs/kf_grpo.py:qwen2_5_vl_7b.", lock_config=True
)
_CPU_DEVICES = flags.DEFINE_integer(
  "cpu_devices",
  8,
  "Quick plan: fake this many CPU devices (the target's device count; "
  "--topology sets it to the slice's chip count).",
)
_TOPOLOGY = flags.DEFINE_string(
  "topology",
  "",
  "TPU slice as Cloud TPU names it: v5p-8, v5p-16, v5p-64, v5e-32, "
  "v5e-256, v6e-16, v6e-64, v4-32, ...",
)
_COMPILE = flags.DEFINE_bool(
  "compile",
  False,
  "Compile every program of a step for --topology (needs libtpu) and "
  "report XLA's memory and cost analyses; exit status 1 if any program does not fit.",
)
_HBM_GIB = flags.DEFINE_float(
  "hbm_gib", None, "HBM per chip to check against, GiB (default: the chip's own)."
)
_PROGRAMS = flags.DEFINE_list(
  "programs",
  [],
  "With --compile: only these programs (sft_step, views, sample, "
  "logprobs, grpo_step); default all.",
)
_FRAME_SIZE = flags.DEFINE_integer(
  "frame_size", 448, "Frame side after preprocessing, pixels (sets video tokens)."
)
_TOKENIZER_DIR = flags.DEFINE_string(
  "tokenizer_dir",
  "",
  "Tokenizer folder, for configs with model.match_tokenizer "
  "(default: config.input.tokenizer_dir, else <data_dir>/tokenizer).",
)
flags.mark_flags_as_required(["config"])


def _tokenizer(config):
  """The run's tokenizer when its folder exists (needed with model.match_tokenizer)."""
  import os

  from chronoforge_jax import tokenizer as tokenizer_lib

  tok_dir = (
    _TOKENIZER_DIR.value
    or config.input.tokenizer_dir
    or (os.path.join(config.input.data_dir, "tokenizer") if config.input.data_dir else "")
  )
  if tok_dir and os.path.isfile(os.path.join(tok_dir, "tokenizer.json")):
    return tokenizer_lib.Tokenizer.from_dir(tok_dir)
  if config.model.match_tokenizer:
    raise app.UsageError(
      f"model.match_tokenizer needs a tokenizer: no tokenizer.json in "
      f"{tok_dir!r}; pass --tokenizer_dir"
    )
  return None


def main(argv):
  del argv
  if _COMPILE.value and not _TOPOLOGY.value:
    raise app.UsageError("--compile needs --topology (e.g. --topology=v5p-16)")
  import os

  # CPU only, set before jax is imported: the quick plan fakes CPU devices, and --compile's
  # TPU devices come from libtpu's topology description, which needs no TPU backend (so
  # no TPU probing at start-up).
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from chronoforge_jax.train import planning

  topo = None
  if _TOPOLOGY.value:
    try:
      topo = planning.parse_topology(_TOPOLOGY.value, hbm_gib=_HBM_GIB.value)
    except ValueError as e:
      raise app.UsageError(str(e)) from e
  devices = topo.chips if topo else _CPU_DEVICES.value
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
  )
  from chronoforge_jax import (
    models,
    sharding,
  )
  from configs import common
  from configs import kf_grpo as kf_grpo_config

  config = _CONFIG.value
  try:
    kf_grpo_config.validate(config, require_data_dir=False)  # Before anything compiles.
  except common.ConfigError as e:
    raise app.UsageError(str(e)) from None
  model_cfg = models.config_from_section(config.model)
  tok = _tokenizer(config)
  if config.model.match_tokenizer:
    model_cfg = models.match_tokenizer(model_cfg, tok)
  if not _COMPILE.value:
    mesh = sharding.mesh_from_config(config.mesh)
    rows = planning.plan(config, mesh, model_cfg, frame_size=_FRAME_SIZE.value)
    print(planning.format_plan(rows, mesh))
    return

  print(f"{topo.name}: {topo.chips} chips, libtpu topology {topo.topology_name}", flush=True)
  mesh = planning.topology_mesh(topo, config.mesh)
  rows = planning.plan(config, mesh, model_cfg, frame_size=_FRAME_SIZE.value)
  print(planning.format_plan(rows, mesh), flush=True)
  b = config.input.batch_size
  per = mesh.shape["data"] * mesh.shape["fsdp"]
  print(
    f"batch {b} prompts ({b / per:g} per data x fsdp shard), K={config.tad.k} "
    f"keyframes at {_FRAME_SIZE.value} px, G={config.rl.num_generations}, "
    f"G'={config.rl.num_disordered}, up to {config.rl.max_new_tokens} new tokens; "
    f"remat {config.model.remat_policy}, attention {config.model.attention_impl}",
    flush=True,
  )
  stop = None
  if tok is not None:
    stop = tuple(
      t for t in (model_cfg.eos_token_id, tok.token_to_id("<|endoftext|>")) if t is not None
    )
  reports = planning.compile_programs(
    config,
    mesh,
    model_cfg,
    frame_size=_FRAME_SIZE.value,
    stop_tokens=stop,
    progress=lambda line: print(line, flush=True),
    only=_PROGRAMS.value or None,
  )
  print(planning.format_reports(reports, topo))
  line, fits = planning.fit_line(reports, topo)
  print(line, flush=True)
  if not fits:
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
