"""Tests for chronoforge_jax.data.prompts: the `short` and `videor1` prompt templates.

References: the project's prompt before templates existed (`Tokenizer.chat_prompt`), Video-R1's
templates transcribed verbatim below, and Qwen2.5-VL's chat template rendered with jinja2
(tests/tokenizer_test.py holds it verbatim).
"""

from __future__ import annotations

import importlib.util
import os

import jinja2
import pytest

from chronoforge_jax import tokenizer as tokenizer_lib
from chronoforge_jax.data import prompts

# TRANSCRIBED verbatim from Video-R1 src/r1-v/src/open_r1/grpo.py @
# 59d65c347e44efa71be27abf9d89b4a2bb7d1c05 (long lines kept as there).
QUESTION_TEMPLATE = (
  "{Question}\n"
  "Please think about this question as if you were a human pondering deeply. "
  "Engage in an internal dialogue using expressions such as 'let me think', 'wait', 'Hmm', 'oh, I see', 'let's break it down', etc, or other natural language thought expressions "
  "It's encouraged to include self-reflection or verification in the reasoning process. "
  "Provide your detailed reasoning between the <think> </think> tags, and then give your final answer between the <answer> </answer> tags."
)

TYPE_TEMPLATE = {
  "multiple choice": " Please provide only the single option letter (e.g., A, B, C, D, etc.) within the <answer> </answer> tags.",
  "numerical": " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags.",
  "OCR": " Please transcribe text from the image/video clearly and provide your text answer within the <answer> </answer> tags.",
  "free-form": " Please provide your text answer within the <answer> </answer> tags.",
  "regression": " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags.",
}


def make_conversation_image_and_video(example):
  if example["problem_type"] == "multiple choice":
    question = example["problem"] + "Options:\n"
    for op in example["options"]:
      question += op + "\n"
  else:
    question = example["problem"]
  return QUESTION_TEMPLATE.format(Question=question) + TYPE_TEMPLATE[example["problem_type"]]


# ------------------------------------------------------------------ end of transcription

_spec = importlib.util.spec_from_file_location(
  "_tokenizer_test", os.path.join(os.path.dirname(__file__), "..", "tokenizer_test.py")
)
_tokenizer_test = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tokenizer_test)

QUESTION = "Which event happens first in the video?"
OPTIONS = [
  "a red circle appears",
  "the screen flashes white",
  "a blue square moves",
  "a cross changes colour",
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return tokenizer_lib.build_tiny_tokenizer(tmp_path_factory.mktemp("tok"), vocab_size=384)


def _qwen(text: str, num_video_tokens: int, system: str | None = None) -> str:
  messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}]
  if system is not None:
    messages.insert(0, {"role": "system", "content": system})
  out = jinja2.Template(_tokenizer_test.QWEN25VL_TEMPLATE).render(
    messages=messages, add_generation_prompt=True
  )
  return out.replace("<|video_pad|>", "<|video_pad|>" * num_video_tokens)


@pytest.mark.parametrize("num_video_tokens", [1, 23])
def test_short_is_todays_prompt(tok, num_video_tokens):
  ids = prompts.encode_prompt(tok, "short", QUESTION, OPTIONS, num_video_tokens)
  assert ids == tok.encode_chat_prompt(QUESTION, OPTIONS, num_video_tokens)
  assert prompts.prompt_text(
    "short", QUESTION, OPTIONS, num_video_tokens=num_video_tokens
  ) == tok.chat_prompt(QUESTION, OPTIONS, num_video_tokens)


@pytest.mark.parametrize("problem_type", list(TYPE_TEMPLATE))
def test_videor1_is_video_r1s_prompt_in_qwens_chat_template(tok, problem_type):
  mc = problem_type == "multiple choice"
  # Video-R1's data keeps the letters in the options: "A. a red circle appears".
  example = {
    "problem": QUESTION,
    "problem_type": problem_type,
    "options": [f"{'ABCD'[i]}. {o}" for i, o in enumerate(OPTIONS)] if mc else [],
  }
  want = _qwen(make_conversation_image_and_video(example), 5)  # No system message there.
  got = prompts.prompt_text("videor1", QUESTION, OPTIONS if mc else [], problem_type, 5)
  assert got == want
  ids = prompts.encode_prompt(tok, "videor1", QUESTION, OPTIONS if mc else [], 5, problem_type)
  assert ids == tok.encode(want)


@pytest.mark.parametrize("problem_type", ["numerical", "OCR", "free-form", "regression"])
def test_short_for_other_types_names_the_answer_kind(problem_type):
  system, text = prompts.short_template("How many cars pass?", [], problem_type)
  assert system == tokenizer_lib.SYSTEM_PROMPT
  assert text.startswith("How many cars pass?\n") and "<answer> </answer>" in text
  assert prompts.prompt_text("short", "Q?", [], problem_type) == _qwen(
    prompts.short_template("Q?", [], problem_type)[1], 1, tokenizer_lib.SYSTEM_PROMPT
  )


def test_unknown_template_and_type_fail_clearly():
  with pytest.raises(KeyError, match="unknown prompt template 'video_r1'.*'short', 'videor1'"):
    prompts.prompt_text("video_r1", QUESTION, OPTIONS)
  with pytest.raises(ValueError, match="unknown problem_type 'counting'"):
    prompts.prompt_text("videor1", QUESTION, OPTIONS, "counting")
