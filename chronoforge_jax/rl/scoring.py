"""Answer scoring by name: how an evaluation reads the option a generated answer names.

Published VideoMME numbers come from lmms-eval's VideoMME task, whose reader is much
stricter than the project's: on the same responses the two can differ by 15 points, so a
number is only comparable with one read the same way. Every evaluation result records
the scoring it used (`EvalResult.settings["scoring"]`).

* `lmms_eval`: lmms-eval's VideoMME rule, `extract_characters_regex` in
  `lmms_eval/tasks/videomme/utils.py` at d0c1eae757432949cc276537e9d883934738ae21 (the
  same function since at least bb3fd824, November 2024, until lmms-eval PR #1274 of April
  2026 replaced it by a generic multiple-choice extractor; VideoMME numbers published in
  that time with lmms-eval were read by this one). Drop a few answer prefixes
  ("The best answer is", ...), then the FIRST capital A-D anywhere in the response is
  the answer, whatever the word around it ("All ..." reads A); a response of more than
  ten words without any A-D reads nothing. It is applied to the whole response,
  reasoning and tags included, as lmms-eval applied it to what the model returned. A
  letter past the question's options reads as no answer (lmms-eval scores it wrong too).
* `lenient`: the project's reader, `rewards.extract_choice`: the last answer tag's letter
  (wrapped, punctuated, or the option text), else answer phrases, "B is correct", marked
  letters, or the one standalone capital letter; several distinct bare letters ("B, C")
  are a hedge and read nothing.
"""

from __future__ import annotations

import json
import os
import re
from typing import Callable, Sequence

from chronoforge_jax.registry import Registry
from chronoforge_jax.rl import rewards

# (generated text, option texts) -> 0-based option index, or None when none is read.
ScoringFn = Callable[[str, Sequence[str]], "int | None"]
SCORINGS: Registry[ScoringFn] = Registry("scoring")

# lmms-eval videomme/utils.py @ d0c1eae7, verbatim: two pairs of prefixes lack a comma
# there, so Python joins them ("The best option isThe correct option is"); kept as is.
LMMS_EVAL_ANSWER_PREFIXES = (
  "The best answer is",
  "The correct answer is",
  "The answer is",
  "The answer",
  "The best option isThe correct option is",
  "Best answer:Best option:",
)


def lmms_eval_letter(response: str) -> str:
  """lmms-eval's VideoMME `extract_characters_regex`: the letter read, or ""."""
  s = response.strip()
  for prefix in LMMS_EVAL_ANSWER_PREFIXES:
    s = s.replace(prefix, "")
  if len(s.split()) > 10 and not re.search("[ABCD]", s):
    return ""
  m = re.search(r"[ABCD]", s)
  return m[0] if m else ""


@SCORINGS.register("lmms_eval")
def lmms_eval_scoring(text: str, options: Sequence[str]) -> int | None:
  """The option index lmms-eval's VideoMME rule reads in `text` (see the module doc)."""
  letter = lmms_eval_letter(text)
  if not letter:
    return None
  index = "ABCD".index(letter)
  return index if index < len(options) else None


@SCORINGS.register("lenient")
def lenient_scoring(text: str, options: Sequence[str]) -> int | None:
  """The option index `rewards.extract_choice` reads in `text`."""
  return rewards.extract_choice(text, list(options))


def score(name: str, text: str, options: Sequence[str]) -> int | None:
  """The option index scoring `name` reads in `text` (None: nothing read)."""
  return SCORINGS.get(name)(text, options)


# ---------------------------------------------------------------------------------------
# What an evaluation of a training run uses by default.
# ---------------------------------------------------------------------------------------

EVAL_DEFAULTS = "eval_defaults.json"


def write_eval_defaults(workdir: str | os.PathLike, *, prompt_template: str, scoring: str) -> str:
  """Records a run's prompt template and scoring in `<workdir>/eval_defaults.json`.

  `launch.eval` reads it (`read_eval_defaults`), so a checkpoint is evaluated with the
  prompt it was trained on unless told otherwise.

  Returns:
    The file's path.
  """
  path = os.path.join(os.fspath(workdir), EVAL_DEFAULTS)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump({"prompt_template": prompt_template, "scoring": scoring}, f, indent=1)
  os.replace(tmp, path)
  return path


def read_eval_defaults(checkpoint: str | os.PathLike) -> tuple[dict[str, str], str | None]:
  """The eval defaults of the run a checkpoint path belongs to.

  Looks in the path and up to three folders above it (a run's workdir holds
  `checkpoints/<step>/...`).

  Returns:
    ({"prompt_template": ..., "scoring": ...} or {}, the file found or None).
  """
  path = os.path.abspath(os.fspath(checkpoint)) if checkpoint else ""
  for _ in range(4):
    if not path:
      break
    candidate = os.path.join(path, EVAL_DEFAULTS)
    if os.path.isfile(candidate):
      with open(candidate) as f:
        return dict(json.load(f)), candidate
    parent = os.path.dirname(path)
    path = "" if parent == path else parent
  return {}, None
