"""Video-R1's five problem types and the answer rule of each (host-side, plain Python).

Ported from Video-R1 `src/r1-v/src/open_r1/grpo.py` (`accuracy_reward`) at commit
59d65c347e44efa71be27abf9d89b4a2bb7d1c05. Each rule maps (completion, solution) to a
reward in [0, 1]; `rewards.accuracy` dispatches on an item's problem type, and the data
loader uses the rules to reject solutions they could not score. No JAX here, so the
loaders stay light.
"""

from __future__ import annotations

import functools
import re
from typing import Callable

import numpy as np

from chronoforge_jax.registry import Registry

# Ported from Video-R1 `src/r1-v/src/open_r1/grpo.py` (`accuracy_reward`) at commit
# 59d65c347e44efa71be27abf9d89b4a2bb7d1c05. Where Video-R1's code has a quirk the port
# decides (README "Video-R1 problem types"):
# * followed: the answer is the FIRST <answer> span, stripped; multiple choice is an exact
#   string match; numbers are compared rounded to 2 decimals; OCR is 1 - word error rate,
#   free-form the mean ROUGE-1/2/L F-measure (rouge-score, Porter stemmer), regression
#   1 - relative error (with Video-R1's 1e-9 terms), each clipped to [0, 1].
# * deviated (bugs): a solution without answer tags is an error (Video-R1 reads it as ""
#   and gives full credit to any completion without tags; the loader rejects such items);
#   numerical answers compare values only (Video-R1 also scores 0 when exactly one side
#   contains "." or ",", so "3.0" vs "3" and "1,000" vs "1000" were wrong although its own
#   parser drops the comma); a non-finite regression answer ("nan", Video-R1: 1.0) scores
#   0; a regression ground truth of 0 gives 1 to an answer of exactly 0 (Video-R1: every
#   answer 0); each item is scored by its own problem type (Video-R1 takes the first
#   item's type for the whole batch); an unknown problem type raises (Video-R1: reward 0
#   here, a KeyError in its prompt builder).

PROBLEM_TYPES = ("multiple choice", "numerical", "OCR", "free-form", "regression")
ANSWER_RULES: Registry[Callable[[str, str], float]] = Registry("Video-R1 problem type")
_VR1_ANSWER = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)


def videor1_answer(text: str) -> str | None:
  """The first `<answer>...</answer>` span, stripped (Video-R1's `extract_answer`), or None
  when there is none (Video-R1 returns "")."""
  m = _VR1_ANSWER.search(text)
  return m.group(1).strip() if m else None


def solution_answer(solution: str) -> str:
  """The reference answer inside a Video-R1 solution "<answer>X</answer>".

  Raises:
    ValueError: the solution has no answer tags (Video-R1 would read "" and reward every
      completion without tags).
  """
  gt = videor1_answer(solution)
  if gt is None:
    raise ValueError(
      f"solution {solution[:60]!r} has no <answer>...</answer>; write the "
      "reference answer as <answer>X</answer>"
    )
  return gt


def _number(text: str | None) -> float | None:
  """Video-R1's `normalize_number` (commas dropped, then float), None for non-finite."""
  if text is None:
    return None
  try:
    value = float(text.replace(",", ""))
  except ValueError:
    return None
  return value if np.isfinite(value) else None


def word_error_rate(reference: str, hypothesis: str) -> float:
  """Word-level Levenshtein distance / reference words (Video-R1's `wer`)."""
  ref, hyp = reference.split(), hypothesis.split()
  prev = list(range(len(hyp) + 1))
  for i in range(1, len(ref) + 1):
    cur = [i] + [0] * len(hyp)
    for j in range(1, len(hyp) + 1):
      cur[j] = (
        prev[j - 1] if ref[i - 1] == hyp[j - 1] else 1 + min(prev[j], cur[j - 1], prev[j - 1])
      )
    prev = cur
  return prev[-1] / max(1, len(ref))


@functools.lru_cache(maxsize=1)
def _rouge_scorer():
  # Loaded on first use: rouge-score pulls in nltk, which most runs never need.
  from rouge_score import rouge_scorer

  return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def rouge_mean_f(reference: str, hypothesis: str) -> float:
  """Mean of the ROUGE-1, ROUGE-2 and ROUGE-L F-measures (stemmed), as Video-R1."""
  scores = _rouge_scorer().score(reference, hypothesis)
  return (scores["rouge1"].fmeasure + scores["rouge2"].fmeasure + scores["rougeL"].fmeasure) / 3


@ANSWER_RULES.register("multiple choice")
def multiple_choice_rule(completion: str, solution: str) -> float:
  """1 if the answer span equals the reference letter exactly, else 0."""
  gt, out = solution_answer(solution), videor1_answer(completion)
  return float(out is not None and out == gt)


@ANSWER_RULES.register("numerical")
def numerical_rule(completion: str, solution: str) -> float:
  """1 if both parse as numbers equal after rounding to 2 decimals, else 0."""
  gt, out = _number(solution_answer(solution)), _number(videor1_answer(completion))
  return float(gt is not None and out is not None and round(gt, 2) == round(out, 2))


@ANSWER_RULES.register("OCR")
def ocr_rule(completion: str, solution: str) -> float:
  """1 - word error rate of the answer span against the reference, clipped to [0, 1]."""
  gt, out = solution_answer(solution), videor1_answer(completion) or ""
  return float(min(1.0, max(0.0, 1.0 - word_error_rate(gt, out))))


@ANSWER_RULES.register("free-form")
def free_form_rule(completion: str, solution: str) -> float:
  """Mean ROUGE-1/2/L F-measure of the answer span against the reference, in [0, 1]."""
  gt, out = solution_answer(solution), videor1_answer(completion) or ""
  return float(min(1.0, max(0.0, rouge_mean_f(gt, out))))


@ANSWER_RULES.register("regression")
def regression_rule(completion: str, solution: str) -> float:
  """1 - relative error |out - gt| / |gt| (clipped to [0, 1]); 0 if either is no number."""
  gt, out = _number(solution_answer(solution)), _number(videor1_answer(completion))
  if gt is None or out is None:
    return 0.0
  if gt == 0:
    return float(out == 0)
  rel = (abs(out - gt) + 1e-9) / (abs(gt) + 1e-9)
  return float(1.0 - min(1.0, max(0.0, rel)))


def type_metric_name(problem_type: str) -> str:
  """ "free-form" -> "free_form", "multiple choice" -> "multiple_choice" (metric tags)."""
  return problem_type.replace(" ", "_").replace("-", "_")


def check_problem_type(problem_type: str) -> str:
  """`problem_type` if it is one of Video-R1's five, else a ValueError naming them."""
  if problem_type not in ANSWER_RULES:
    raise ValueError(f"unknown problem_type {problem_type!r}; Video-R1's are {list(PROBLEM_TYPES)}")
  return problem_type
