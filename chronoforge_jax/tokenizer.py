"""Text tokenizer: HF `tokenizers` loaded from a local `tokenizer.json`, plus the chat template.

`Tokenizer` wraps a Qwen2.5-VL `tokenizer.json` (or the tiny stand-in that
`build_tiny_tokenizer` trains locally for the synthetic set and tests) and builds the
multiple-choice video prompt with the Qwen2.5-VL chat template:

  <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
  <|im_start|>user\\n<|vision_start|><|video_pad|>...<|vision_end|>QUESTION
  A. ...\\nB. ...\\nINSTRUCTION<|im_end|>\\n<|im_start|>assistant\\n

Nothing is downloaded: the directory must already hold `tokenizer.json`.
"""

from __future__ import annotations

import os
import string
from typing import Sequence

import numpy as np
import tokenizers

from chronoforge_jax import fileio

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
VIDEO_PAD = "<|video_pad|>"
IMAGE_PAD = "<|image_pad|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, VISION_START, VISION_END, VIDEO_PAD, IMAGE_PAD)

SYSTEM_PROMPT = "You are a helpful assistant."
INSTRUCTION = (
  "Think about the question inside <think> </think> tags, then give only the "
  "option letter inside <answer> </answer> tags."
)
LETTERS = string.ascii_uppercase


class Tokenizer:
  """A `tokenizers.Tokenizer` with Qwen2.5-VL special tokens and the chat template.

  Attributes:
    pad_id: id used to pad prompts and targets (`<|endoftext|>`, as Qwen2.5-VL does).
    eos_id: id that ends an assistant turn (`<|im_end|>`).
    eos_ids: every id that stops generation (`<|im_end|>`, `<|endoftext|>`).
    video_pad_id, image_pad_id, vision_start_id, vision_end_id, im_start_id: special ids.
    vocab_size: number of ids, special tokens included.
  """

  def __init__(self, tokenizer: tokenizers.Tokenizer, *, name: str = "<in memory>"):
    self._tok = tokenizer
    self.name = name
    ids = {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
    missing = [t for t, i in ids.items() if i is None]
    if missing:
      raise ValueError(
        f"tokenizer {name} lacks the Qwen2.5-VL special tokens {missing}; use a "
        "Qwen2.5-VL tokenizer.json or build one with build_tiny_tokenizer()"
      )
    self.pad_id = ids[ENDOFTEXT]
    self.eos_id = ids[IM_END]
    self.eos_ids = (ids[IM_END], ids[ENDOFTEXT])
    self.im_start_id = ids[IM_START]
    self.vision_start_id = ids[VISION_START]
    self.vision_end_id = ids[VISION_END]
    self.video_pad_id = ids[VIDEO_PAD]
    self.image_pad_id = ids[IMAGE_PAD]
    self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

  @classmethod
  def from_dir(cls, directory: str | os.PathLike) -> Tokenizer:
    """Loads `directory/tokenizer.json` (a local HF model directory or a tiny tokenizer).

    Args:
      directory: folder holding tokenizer.json.

    Returns:
      The Tokenizer.

    Raises:
      FileNotFoundError: when tokenizer.json is absent (nothing is downloaded).
    """
    path = os.path.join(os.fspath(directory), "tokenizer.json")
    if not os.path.isfile(path):
      raise FileNotFoundError(
        f"no tokenizer.json in {os.fspath(directory)!r}; point input.tokenizer_dir at a "
        "local Qwen2.5-VL checkpoint folder, or build one with build_tiny_tokenizer()"
      )
    return cls(tokenizers.Tokenizer.from_file(path), name=path)

  def __getstate__(self):
    # Grain pickles pipelines into worker processes; the Rust object goes as JSON.
    return {"json": self._tok.to_str(), "name": self.name}

  def __setstate__(self, state):
    self.__init__(tokenizers.Tokenizer.from_str(state["json"]), name=state["name"])

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`; special-token strings inside it map to their ids."""
    return self._tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int] | np.ndarray, *, skip_special_tokens: bool = False) -> str:
    """Text of `ids` (pad ids are dropped when `skip_special_tokens`)."""
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def token_to_id(self, token: str) -> int | None:
    return self._tok.token_to_id(token)

  def question_text(
    self, question: str, options: Sequence[str], *, instruction: str = INSTRUCTION
  ) -> str:
    """The user text after the video: question, lettered options, answer instruction."""
    if not 2 <= len(options) <= len(LETTERS):
      raise ValueError(f"question {question[:60]!r} has {len(options)} options; need 2-26")
    lines = [question.strip(), *(f"{LETTERS[i]}. {o.strip()}" for i, o in enumerate(options))]
    return "\n".join(lines + [instruction])

  def chat_prompt(
    self,
    question: str,
    options: Sequence[str],
    num_video_tokens: int,
    *,
    system: str = SYSTEM_PROMPT,
    instruction: str = INSTRUCTION,
  ) -> str:
    """The full prompt string in the Qwen2.5-VL chat template, ending at the assistant turn.

    Args:
      question: question text.
      options: option texts without letters (letters A, B, ... are added).
      num_video_tokens: how many `<|video_pad|>` placeholders the vision tokens fill.
      system: system message.
      instruction: answer-format instruction appended after the options.

    Returns:
      The prompt text.
    """
    video = VISION_START + VIDEO_PAD * num_video_tokens + VISION_END
    user = video + self.question_text(question, options, instruction=instruction)
    return (
      f"{IM_START}system\n{system}{IM_END}\n{IM_START}user\n{user}{IM_END}\n{IM_START}assistant\n"
    )

  def encode_chat_prompt(
    self,
    question: str,
    options: Sequence[str],
    num_video_tokens: int,
    *,
    system: str = SYSTEM_PROMPT,
    instruction: str = INSTRUCTION,
  ) -> list[int]:
    """Token ids of `chat_prompt(...)`, splicing the video placeholder ids directly.

    Equal to `encode(chat_prompt(...))` (tested) but does not tokenize thousands of
    placeholder strings.
    """
    head = self.encode(f"{IM_START}system\n{system}{IM_END}\n{IM_START}user\n")
    tail = self.encode(
      self.question_text(question, options, instruction=instruction)
      + f"{IM_END}\n{IM_START}assistant\n"
    )
    video = [self.vision_start_id, *[self.video_pad_id] * num_video_tokens, self.vision_end_id]
    return head + video + tail

  def answer_text(self, answer_index: int, reasoning: str = "") -> str:
    """Reference assistant turn: `<think>REASONING</think><answer>LETTER</answer><|im_end|>`."""
    return f"<think>{reasoning.strip()}</think><answer>{LETTERS[answer_index]}</answer>{IM_END}"


# Text the tiny tokenizer's merges are learned from: the template, the instruction and
# the words of multiple-choice temporal questions, so prompts stay short in tokens.
_TINY_CORPUS = [
  f"{IM_START}system\n{SYSTEM_PROMPT}{IM_END}\n{IM_START}user\n",
  f"{IM_END}\n{IM_START}assistant\n",
  INSTRUCTION,
  "<think> </think> <answer>A</answer> <answer>B</answer> <answer>C</answer> <answer>D</answer>",
  "\nA. \nB. \nC. \nD. \nE. ",
  "Which event happened first? Which event happened last? What happened right after "
  "the event? What happened right before the event? Which of the following happens in "
  "the video? What is the order of the events? When does it happen?",
  "the video shows a scene; first, then, next, after, before, finally, at the start, at "
  "the end, in the middle, seconds, because, so the answer is",
  "a red circle appears. a green square moves from left to right. a blue triangle "
  "changes colour from yellow to white. the screen flashes. a purple star appears. an "
  "orange diamond moves from top to bottom. a cyan cross appears.",
  "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 s.",
]


def build_tiny_tokenizer(
  out_dir: str | os.PathLike, *, vocab_size: int = 512, extra_texts: Sequence[str] = ()
) -> Tokenizer:
  """Trains a small byte-level BPE tokenizer locally and saves `out_dir/tokenizer.json`.

  Byte-level, so any text encodes; the seven Qwen2.5-VL special tokens get ids 0-6.
  Deterministic for the same arguments.

  Args:
    out_dir: folder to write tokenizer.json (and a small tokenizer_config.json) into.
    vocab_size: total vocabulary (256 byte symbols + 7 special tokens + merges); keep it
      within the tiny model's vocabulary.
    extra_texts: more training text (e.g. the synthetic set's questions).

  Returns:
    The Tokenizer.
  """
  min_size = 256 + len(SPECIAL_TOKENS)
  if vocab_size < min_size:
    raise ValueError(f"vocab_size={vocab_size}: a byte-level BPE needs at least {min_size}")
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
    vocab_size=vocab_size,
    min_frequency=2,
    show_progress=False,
    special_tokens=list(SPECIAL_TOKENS),
    initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
  )
  texts = [*_TINY_CORPUS, *extra_texts]
  # Repeating the corpus makes every pair frequent enough to merge; order is fixed.
  tok.train_from_iterator(texts * 4, trainer=trainer)
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, "tokenizer.json")
  tmp = path + ".tmp"
  tok.save(tmp)
  os.replace(tmp, path)
  fileio.write_json_atomic(
    os.path.join(out_dir, "tokenizer_config.json"),
    {
      "pad_token": ENDOFTEXT,
      "eos_token": IM_END,
      "model_max_length": 32768,
      "note": "tiny byte-level BPE built by chronoforge_jax.tokenizer",
    },
    sort_keys=False,
  )
  return Tokenizer(tok, name=path)
