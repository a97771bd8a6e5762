"""Tests for chronoforge_jax.rl.scoring: `lmms_eval` against a transcription of lmms-eval."""

from __future__ import annotations

import re

import pytest

from chronoforge_jax.rl import (
  scoring,  # TRANSCRIBED verbatim from lmms-eval lmms_eval/tasks/videomme/utils.py @
)


# d0c1eae757432949cc276537e9d883934738ae21 (`extract_characters_regex`, unchanged since
# bb3fd824) and the comparison in `videomme_process_results`.
def extract_characters_regex(s):
  s = s.strip()
  answer_prefixes = [
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option isThe correct option is",
    "Best answer:Best option:",
  ]
  for answer_prefix in answer_prefixes:
    s = s.replace(answer_prefix, "")

  if len(s.split()) > 10 and not re.search("[ABCD]", s):
    return ""

  matches = re.search(r"[ABCD]", s)
  if matches is None:
    return ""
  return matches[0]


def _lmms_correct(pred, gt_ans):
  pred_ans = extract_characters_regex(pred)
  return 1.0 if pred_ans.lower() == gt_ans.lower() else 0.0


# ------------------------------------------------------------------ end of transcription


OPTIONS = ["a red circle", "a blue square", "a green cross", "the screen flashes"]
RESPONSES = [
  "B",
  "B.",
  "(B)",
  " C ",
  "D",
  "a",
  "b",
  "The best answer is C",
  "The answer is (D).",
  "The answer: A",
  "The correct answer is B",
  "The best option is C",
  "The best option isThe correct option is D",
  "Best answer:Best option: B",
  "Answer: B",
  "I choose B",
  "Option B is correct.",
  "B is correct. A is not.",
  "B, C",
  "<answer>B</answer>",
  "<think>Let me think about it.</think><answer>C</answer>",
  "<think>Alright, the circle appears first.</think><answer>B</answer>",
  "<think>hmm, wait, let me see the video again</think><answer>D</answer>",
  "All frames show it. The answer is D",
  "Based on the video, the answer is B.",
  "the answer is b",
  "I think it is the blue square",
  "none of them",
  "one two three four five six seven eight nine ten eleven",
  "ABCD",
  "Definitely C.",
  "The circle appears, so C",
  "Clearly (A)",
  "E",
  "(E) none",
  "",
  "   ",
  "\n\nB\n",
  "**B**",
  "The answer is **C**.",
  "B) a blue square",
  "Answer:\nD. the screen flashes",
  "The answer A",
  "The answerB",
  "in this video a dog runs to the left and then it stops near the wall",
  "in this video a dog runs to the left and then it stops near the wall B",
  "It is Dog",
  "Cats are shown",
  "Because the blue square moves, B",
]


@pytest.mark.parametrize("response", RESPONSES)
@pytest.mark.parametrize("gt", ["A", "B", "C", "D"])
def test_lmms_eval_scoring_equals_lmms_eval(response, gt):
  pick = scoring.score("lmms_eval", response, OPTIONS)
  ours = float(pick is not None and "ABCD"[pick] == gt)
  assert ours == _lmms_correct(response, gt)
  letter = extract_characters_regex(response)
  assert pick == ("ABCD".index(letter) if letter else None)


def test_enough_crafted_responses_and_the_readers_differ():
  assert len(set(RESPONSES)) >= 40
  lmms = [scoring.score("lmms_eval", r, OPTIONS) for r in RESPONSES]
  lenient = [scoring.score("lenient", r, OPTIONS) for r in RESPONSES]
  assert sum(a != b for a, b in zip(lmms, lenient)) >= 5  # The two rules are not one rule.


@pytest.mark.parametrize(
  "text, expected",
  [
    ("B is correct. A is not.", 1),
    ("B, C", None),
    ("<answer>(C)</answer>", 2),
    ("<think>Alright</think><answer>B</answer>", 1),
  ],
)
def test_lenient_scoring(text, expected):
  assert scoring.score("lenient", text, OPTIONS) == expected


def test_letter_past_the_options_reads_nothing_and_unknown_name_fails():
  assert scoring.score("lmms_eval", "D", OPTIONS[:3]) is None
  with pytest.raises(KeyError, match="unknown scoring 'lmms'"):
    scoring.score("lmms", "B", OPTIONS)


def test_eval_defaults_are_found_from_a_checkpoint_path(tmp_path):
  run = tmp_path / "run"
  step = run / "checkpoints" / "40" / "state"
  step.mkdir(parents=True)
  assert scoring.read_eval_defaults(str(step)) == ({}, None)
  path = scoring.write_eval_defaults(str(run), prompt_template="videor1", scoring="lmms_eval")
  assert scoring.read_eval_defaults(str(step)) == (
    {"prompt_template": "videor1", "scoring": "lmms_eval"},
    path,
  )
  assert scoring.read_eval_defaults(str(run / "checkpoints"))[1] == path
  assert scoring.read_eval_defaults("") == ({}, None)
