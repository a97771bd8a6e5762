"""Tests for chronoforge_jax.tokenizer: the tiny BPE and the Qwen2.5-VL chat template."""

from __future__ import annotations

import pickle

import hypothesis
import hypothesis.strategies as st
import jinja2
import pytest

from chronoforge_jax import tokenizer as tokenizer_lib

# The chat template shipped in Qwen2.5-VL-7B-Instruct's chat_template.json, verbatim:
# the independent reference for the prompt layout.
QWEN25VL_TEMPLATE = (
  "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
  "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
  "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
  "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
  "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
  "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
  "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
  "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
  "{% elif content['type'] == 'video' or 'video' in content %}"
  "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
  "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
  "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
  "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

QUESTION = "Which event happens first in the video?"
OPTIONS = [
  "a red circle appears",
  "the screen flashes white",
  "a blue square moves",
  "a cross changes colour from red to blue",
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return tokenizer_lib.build_tiny_tokenizer(tmp_path_factory.mktemp("tok"), vocab_size=384)


def _reference_prompt(question_text: str, num_video_tokens: int) -> str:
  messages = [
    {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question_text}]}
  ]
  text = jinja2.Template(QWEN25VL_TEMPLATE).render(messages=messages, add_generation_prompt=True)
  # The Qwen2.5-VL processor expands the one placeholder to one per video token.
  return text.replace("<|video_pad|>", "<|video_pad|>" * num_video_tokens)


def test_tiny_vocab_and_special_ids(tok):
  assert tok.vocab_size == 384
  ids = [tok.token_to_id(t) for t in tokenizer_lib.SPECIAL_TOKENS]
  assert sorted(ids) == list(range(7))
  assert tok.pad_id == tok.token_to_id("<|endoftext|>")
  assert tok.eos_id == tok.token_to_id("<|im_end|>")
  assert tok.video_pad_id == tok.token_to_id("<|video_pad|>")
  # Special strings inside text become single ids.
  assert tok.encode("<|vision_start|><|video_pad|><|vision_end|>") == [
    tok.vision_start_id,
    tok.video_pad_id,
    tok.vision_end_id,
  ]


@pytest.mark.parametrize("num_video_tokens", [0, 1, 37])
def test_chat_prompt_matches_qwen_template(tok, num_video_tokens):
  text = tok.question_text(QUESTION, OPTIONS)
  assert text.splitlines()[1:5] == [
    "A. a red circle appears",
    "B. the screen flashes white",
    "C. a blue square moves",
    "D. a cross changes colour from red to blue",
  ]
  prompt = tok.chat_prompt(QUESTION, OPTIONS, num_video_tokens)
  assert prompt == _reference_prompt(text, num_video_tokens)
  ids = tok.encode_chat_prompt(QUESTION, OPTIONS, num_video_tokens)
  assert ids == tok.encode(prompt)
  assert ids.count(tok.video_pad_id) == num_video_tokens
  assert tok.decode(ids) == prompt


@hypothesis.given(st.text(max_size=60))
@hypothesis.settings(max_examples=50, deadline=None)
def test_roundtrip_any_text(tok, text):
  # Byte-level BPE: every string encodes and decodes back exactly.
  assert tok.decode(tok.encode(text)) == text


def test_answer_text_and_pickle(tok):
  assert tok.answer_text(1, " it is B ") == ("<think>it is B</think><answer>B</answer><|im_end|>")
  ids = tok.encode(tok.answer_text(2, "x"))
  assert ids[-1] == tok.eos_id
  clone = pickle.loads(pickle.dumps(tok))
  assert clone.encode_chat_prompt(QUESTION, OPTIONS, 5) == tok.encode_chat_prompt(
    QUESTION, OPTIONS, 5
  )


def test_build_is_deterministic_and_loads_from_dir(tmp_path):
  a = tokenizer_lib.build_tiny_tokenizer(tmp_path / "a", extra_texts=["zebra crossing"])
  b = tokenizer_lib.build_tiny_tokenizer(tmp_path / "b", extra_texts=["zebra crossing"])
  assert (tmp_path / "a" / "tokenizer.json").read_text() == (
    tmp_path / "b" / "tokenizer.json"
  ).read_text()
  loaded = tokenizer_lib.Tokenizer.from_dir(tmp_path / "a")
  assert loaded.encode("zebra crossing") == a.encode("zebra crossing") == b.encode("zebra crossing")
  # Training text is compressed: far fewer tokens than bytes.
  assert len(a.encode(tokenizer_lib.INSTRUCTION)) < len(tokenizer_lib.INSTRUCTION) / 3


def test_errors_name_the_fix(tmp_path):
  with pytest.raises(FileNotFoundError, match="tokenizer.json"):
    tokenizer_lib.Tokenizer.from_dir(tmp_path)
  with pytest.raises(ValueError, match="vocab_size"):
    tokenizer_lib.build_tiny_tokenizer(tmp_path, vocab_size=100)
  import tokenizers

  plain = tokenizers.Tokenizer(tokenizers.models.BPE())
  with pytest.raises(ValueError, match="special tokens"):
    tokenizer_lib.Tokenizer(plain)
  tok = tokenizer_lib.build_tiny_tokenizer(tmp_path / "t")
  with pytest.raises(ValueError, match="options"):
    tok.question_text("q?", ["only one"])
