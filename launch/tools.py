"""What the launchers share: paths resolved at the boundary, running the project's tools.

Every path a user passes (flags and config fields) is made absolute once, here, against
the folder the command was typed in (`absolute`, `absolute_config_paths`): Orbax wants
absolute paths, and `run_tool` runs its subprocesses from the repository root.

`launch.demo` and `launch.ablation` run `launch.preprocess`, `launch.train` and friends as
subprocesses, exactly as a user would type them, so each stage is a command the user can
copy from the console and rerun alone.
"""

from __future__ import annotations

import os
import subprocess
import sys

from chronoforge_jax.fileio import absolute

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The config fields that hold paths, where a config has them.
CONFIG_PATHS = (
  "input.data_dir",
  "input.tokenizer_dir",
  "model.hf_dir",
  "ckpt.init_from",
  "ckpt.resume",
)


def absolute_config_paths(config, fields: tuple[str, ...] = CONFIG_PATHS):
  """Makes the config's path fields absolute in place (fields it lacks are skipped)."""
  for name in fields:
    section, _, field = name.rpartition(".")
    node = config
    for part in section.split(".") if section else ():
      node = node.get(part) if hasattr(node, "get") else None
    if node is not None and field in node and isinstance(node[field], str):
      node[field] = absolute(node[field])
  return config


def run_tool(cmd: list[str], *, who: str) -> str:
  """Runs `cmd` from the repository root, echoing it; returns its stdout.

  Args:
    cmd: the command line; `[sys.executable, "-m", "launch.x", ...]` echoes as
      `launch.x ...`.
    who: the calling launcher's name, for the error message.

  Raises:
    SystemExit: when the command fails (its stderr has already reached the console).
  """
  print("  $ " + " ".join(cmd[2:] if cmd[0] == sys.executable else cmd), flush=True)
  result = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False, cwd=ROOT)
  if result.returncode != 0:
    raise SystemExit(f"{who}: `{' '.join(cmd)}` failed with exit code {result.returncode}")
  return result.stdout


def preprocess_synthetic(
  out: str, data_arg: str, *, who: str, extra_args: tuple[str, ...] = ()
) -> tuple[str, str]:
  """Writes and preprocesses the synthetic set into <out>/data/{train,eval} (resumable).

  Args:
    out: the run's output folder; videos go to <out>/synthetic.
    data_arg: the `--config` of `launch.preprocess`, e.g. "configs/data.py:demo".
    who: the calling launcher's name, for error messages.
    extra_args: more `launch.preprocess` flags (question counts, --quiet).

  Returns:
    (train_dir, eval_dir).
  """
  dirs = {}
  for split in ("train", "eval"):
    dirs[split] = os.path.join(out, "data", split)
    print(
      run_tool(
        [
          sys.executable,
          "-m",
          "launch.preprocess",
          f"--config={data_arg}",
          *extra_args,
          "--format=synthetic",
          f"--video_dir={os.path.join(out, 'synthetic')}",
          f"--out={dirs[split]}",
          f"--split={split}",
        ],
        who=who,
      ).strip(),
      flush=True,
    )
  return dirs["train"], dirs["eval"]
