"""Prompt templates by name (`config.input.prompt_template`): the user text after the video.

Every prompt is one Qwen2.5-VL chat turn: a system message, then the user turn with the
vision placeholders followed by the template's text, then the open assistant turn:

  <|im_start|>system\\nSYSTEM<|im_end|>\\n<|im_start|>user\\n<|vision_start|><|video_pad|>
  ...<|vision_end|>TEXT<|im_end|>\\n<|im_start|>assistant\\n

Templates (registered in `PROMPT_TEMPLATES`):

* `short`: the project's compact prompt (the smoke and demo configs): the question, the
  lettered options "A. ..." one per line, one instruction line. Byte-for-byte what
  `Tokenizer.question_text` gives for multiple choice; the other Video-R1 problem types
  get the question and an instruction naming the kind of answer.
* `videor1`: Video-R1's exact prompt (`src/r1-v/src/open_r1/grpo.py` @
  59d65c347e44efa71be27abf9d89b4a2bb7d1c05, `make_conversation_image_and_video`):
  `QUESTION_TEMPLATE.format(Question=q) + TYPE_TEMPLATE[problem_type]`, where for
  multiple choice q = problem + "Options:\\n" + each option line + "\\n" (no newline
  between the problem and "Options:", as there). Video-R1 sends no system message, so
  Qwen2.5-VL's chat template adds its default one, "You are a helpful assistant." Video-R1
  stores options as "A. ..." strings; the loader strips the letters and this template
  puts "A. " back, so lettered options come out as published.

Image items are encoded as a one-temporal-patch video (see `data/benchmarks.py`), so
their placeholder is `<|video_pad|>` where Video-R1's has `<|image_pad|>`; the text is
the same.
"""

from __future__ import annotations

from typing import Callable, Sequence

from chronoforge_jax import tokenizer as tokenizer_lib
from chronoforge_jax.registry import Registry

MULTIPLE_CHOICE = "multiple choice"

# Video-R1 grpo.py @ 59d65c34, verbatim, wrapped at 100 columns (there is no full stop
# after "thought expressions" there either).
VIDEOR1_QUESTION_TEMPLATE = (
  "{Question}\n"
  "Please think about this question as if you were a human pondering deeply. "
  "Engage in an internal dialogue using expressions such as 'let me think', 'wait', "
  "'Hmm', 'oh, I see', 'let's break it down', etc, or other natural language thought "
  "expressions "
  "It's encouraged to include self-reflection or verification in the reasoning process. "
  "Provide your detailed reasoning between the <think> </think> tags, and then give your "
  "final answer between the <answer> </answer> tags."
)
VIDEOR1_TYPE_TEMPLATE = {
  "multiple choice": " Please provide only the single option letter (e.g., A, B, C, D, "
  "etc.) within the <answer> </answer> tags.",
  "numerical": " Please provide the numerical value (e.g., 42 or 3.14) within the "
  "<answer> </answer> tags.",
  "OCR": " Please transcribe text from the image/video clearly and provide your text "
  "answer within the <answer> </answer> tags.",
  "free-form": " Please provide your text answer within the <answer> </answer> tags.",
  "regression": " Please provide the numerical value (e.g., 42 or 3.14) within the "
  "<answer> </answer> tags.",
}
# Qwen2.5-VL's chat template adds this system message when a conversation has none.
QWEN_DEFAULT_SYSTEM = "You are a helpful assistant."

_SHORT_TYPE_INSTRUCTION = {
  "numerical": "Think about the question inside <think> </think> tags, then give only the "
  "number inside <answer> </answer> tags.",
  "regression": "Think about the question inside <think> </think> tags, then give only the "
  "number inside <answer> </answer> tags.",
  "OCR": "Think about the question inside <think> </think> tags, then give only the text "
  "you read inside <answer> </answer> tags.",
  "free-form": "Think about the question inside <think> </think> tags, then give a short "
  "answer inside <answer> </answer> tags.",
}

# (question, options, problem_type) -> (system message, user text after the video).
TemplateFn = Callable[[str, Sequence[str], str], tuple[str, str]]
PROMPT_TEMPLATES: Registry[TemplateFn] = Registry("prompt template")


def _check_type(problem_type: str) -> None:
  if problem_type not in VIDEOR1_TYPE_TEMPLATE:
    raise ValueError(
      f"unknown problem_type {problem_type!r}; Video-R1's are {list(VIDEOR1_TYPE_TEMPLATE)}"
    )


def _lettered(options: Sequence[str]) -> list[str]:
  if not 2 <= len(options) <= len(tokenizer_lib.LETTERS):
    raise ValueError(f"a multiple-choice question has {len(options)} options; need 2-26")
  return [f"{tokenizer_lib.LETTERS[i]}. {o.strip()}" for i, o in enumerate(options)]


@PROMPT_TEMPLATES.register("short")
def short_template(
  question: str, options: Sequence[str], problem_type: str = MULTIPLE_CHOICE
) -> tuple[str, str]:
  """Question, "A. ..." option lines, one instruction line (the project's prompt)."""
  _check_type(problem_type)
  if problem_type == MULTIPLE_CHOICE:
    lines = [question.strip(), *_lettered(options), tokenizer_lib.INSTRUCTION]
  else:
    lines = [question.strip(), _SHORT_TYPE_INSTRUCTION[problem_type]]
  return tokenizer_lib.SYSTEM_PROMPT, "\n".join(lines)


@PROMPT_TEMPLATES.register("videor1")
def videor1_template(
  question: str, options: Sequence[str], problem_type: str = MULTIPLE_CHOICE
) -> tuple[str, str]:
  """Video-R1's QUESTION_TEMPLATE + TYPE_TEMPLATE[problem_type], as in its grpo.py."""
  _check_type(problem_type)
  if problem_type == MULTIPLE_CHOICE:
    text = question + "Options:\n" + "".join(line + "\n" for line in _lettered(options))
  else:
    text = question
  return (
    QWEN_DEFAULT_SYSTEM,
    VIDEOR1_QUESTION_TEMPLATE.format(Question=text) + VIDEOR1_TYPE_TEMPLATE[problem_type],
  )


def prompt_text(
  template: str,
  question: str,
  options: Sequence[str],
  problem_type: str = MULTIPLE_CHOICE,
  num_video_tokens: int = 1,
) -> str:
  """The full prompt string (chat turn included) of `template`, for reading and tests."""
  system, text = PROMPT_TEMPLATES.get(template)(question, options, problem_type)
  t = tokenizer_lib
  video = t.VISION_START + t.VIDEO_PAD * num_video_tokens + t.VISION_END
  return (
    f"{t.IM_START}system\n{system}{t.IM_END}\n{t.IM_START}user\n{video}{text}"
    f"{t.IM_END}\n{t.IM_START}assistant\n"
  )


def encode_prompt(
  tok: tokenizer_lib.Tokenizer,
  template: str,
  question: str,
  options: Sequence[str],
  num_video_tokens: int,
  problem_type: str = MULTIPLE_CHOICE,
) -> list[int]:
  """Token ids of `prompt_text(...)`, the video placeholder ids spliced in directly.

  Args:
    tok: the tokenizer.
    template: a name in `PROMPT_TEMPLATES` ("short", "videor1").
    question: the question (Video-R1's `problem`) without options.
    options: option texts without letters (empty for the other problem types).
    num_video_tokens: `<|video_pad|>` placeholders for the vision tokens.
    problem_type: one of Video-R1's five.

  Returns:
    The prompt's token ids.
  """
  system, text = PROMPT_TEMPLATES.get(template)(question, options, problem_type)
  t = tokenizer_lib
  head = tok.encode(f"{t.IM_START}system\n{system}{t.IM_END}\n{t.IM_START}user\n")
  tail = tok.encode(text + f"{t.IM_END}\n{t.IM_START}assistant\n")
  return (
    head + [tok.vision_start_id, *[tok.video_pad_id] * num_video_tokens, tok.vision_end_id] + tail
  )
