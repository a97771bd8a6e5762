r"""Prints the per-device memory of a training config on a mesh, allocating nothing.

  python -m launch.plan --config=configs/kf_grpo.py:qwen2_5_vl_7b --cpu_devices=64 \
      --config.mesh.fsdp=-1 [--frame_size 448] [--tokenizer_dir DIR]

Params (vision, text), optimizer state, the frozen reference (beta > 0) and one rollout's
KV cache, each as elements, bytes over all devices and bytes on the most loaded device,
from abstract shapes and the config's shardings (chronoforge_jax/planning.py). Fake the
target's device count with --cpu_devices to plan a pod from a laptop. Activation memory
is what XLA reports when `launch.train` compiles the step.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file, e.g. configs/kf_grpo.py:qwen2_5_vl_7b.",
    lock_config=True)
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", 8, "Fake this many CPU devices (the target's device count).")
_FRAME_SIZE = flags.DEFINE_integer(
    "frame_size", 448, "Frame side after preprocessing, pixels (sets video tokens).")
_TOKENIZER_DIR = flags.DEFINE_string(
    "tokenizer_dir", "", "Tokenizer folder, for configs with model.match_tokenizer "
    "(default: config.input.tokenizer_dir, else <data_dir>/tokenizer).")
flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  import os  # pylint: disable=g-import-not-at-top
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={_CPU_DEVICES.value}")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from chronoforge_jax import models  # pylint: disable=g-import-not-at-top
  from chronoforge_jax import planning  # pylint: disable=g-import-not-at-top
  from chronoforge_jax import sharding  # pylint: disable=g-import-not-at-top
  from chronoforge_jax import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top

  config = _CONFIG.value
  model_cfg = models.config_from_section(config.model)
  if config.model.match_tokenizer:
    tok_dir = (_TOKENIZER_DIR.value or config.input.tokenizer_dir or
               os.path.join(config.input.data_dir, "tokenizer"))
    if not os.path.isfile(os.path.join(tok_dir, "tokenizer.json")):
      raise app.UsageError(f"model.match_tokenizer needs a tokenizer: no tokenizer.json in "
                           f"{tok_dir!r}; pass --tokenizer_dir")
    model_cfg = models.match_tokenizer(model_cfg, tokenizer_lib.Tokenizer.from_dir(tok_dir))
  mesh = sharding.mesh_from_config(config.mesh)
  rows = planning.plan(config, mesh, model_cfg, frame_size=_FRAME_SIZE.value)
  print(planning.format_plan(rows, mesh))


if __name__ == "__main__":
  app.run(main)
