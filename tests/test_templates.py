"""Chat rendering for causal-lm: the loss falls on the assistant turns (and the final EOS) only."""

import pytest
import tiny

from peftkit.config import ConfigError
from peftkit.templates import (
    IGNORE_INDEX,
    TEMPLATES,
    TemplateError,
    check_messages,
    generation_prompt,
    prompt_response_messages,
    render_chat,
    render_text,
    use_chat_template,
)

CHAT = [
    {"role": "system", "content": "you are very good"},
    {"role": "user", "content": "the movie was good"},
    {"role": "assistant", "content": "great film"},
    {"role": "user", "content": "and the plot"},
    {"role": "assistant", "content": "bad plot and sad story"},
]


def _tokenizer(template: str):
    tokenizer = tiny.build_tokenizer("llama")
    use_chat_template(tokenizer, template)
    return tokenizer


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_prompt_response_masks_every_prompt_token_and_no_response_token(template):
    tokenizer = _tokenizer(template)
    messages = prompt_response_messages("this film was really good", "good movie")
    chat = render_chat(tokenizer, messages)
    prompt = _encode(tokenizer, render_text(tokenizer, messages[:1], generation_prompt=True))
    response = _encode(tokenizer, "good movie") + [tokenizer.eos_token_id]
    assert chat.input_ids == prompt + response
    assert chat.labels == [IGNORE_INDEX] * len(prompt) + response  # the final EOS is trained too
    assert chat.input_ids[-1] == chat.labels[-1] == tokenizer.eos_token_id


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_chat_trains_every_assistant_turn(template):
    tokenizer = _tokenizer(template)
    chat = render_chat(tokenizer, CHAT)
    trained = [i for i, label in enumerate(chat.labels) if label != IGNORE_INDEX]
    assert [chat.input_ids[i] for i in trained] == [chat.labels[i] for i in trained]
    eos = tokenizer.eos_token_id
    expected = _encode(tokenizer, "great film") + [eos] + _encode(tokenizer, "bad plot and sad story") + [eos]
    assert [chat.labels[i] for i in trained] == expected
    # the prompt of the second turn (system, both user turns, the first answer) is what generation sees
    prompt, reference = generation_prompt(tokenizer, CHAT)
    assert chat.input_ids[: len(prompt)] == prompt and reference == CHAT[-1]["content"]
    assert chat.labels[len(prompt) - 1] == IGNORE_INDEX and chat.labels[len(prompt)] != IGNORE_INDEX


def test_tokenizer_template_is_used_and_eos_appended_when_missing():
    tokenizer = tiny.build_tokenizer("llama")
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}assistant {% endif %}"
    )
    assert use_chat_template(tokenizer, "auto") == "tokenizer"
    chat = render_chat(tokenizer, prompt_response_messages("good", "bad film"))
    assert chat.input_ids[-1] == tokenizer.eos_token_id  # the template writes none: appended and trained
    assert [t for t in chat.labels if t != IGNORE_INDEX] == _encode(tokenizer, "bad film") + [
        tokenizer.eos_token_id
    ]


def test_auto_falls_back_to_plain_and_unknown_template_is_refused():
    tokenizer = tiny.build_tokenizer("llama")
    assert use_chat_template(tokenizer, "auto") == "plain"
    assert tokenizer.chat_template == TEMPLATES["plain"]
    with pytest.raises(ConfigError, match="chat_template.*'llama9'"):
        use_chat_template(tokenizer, "llama9")


def test_template_that_rewrites_earlier_turns_is_refused():
    tokenizer = tiny.build_tokenizer("llama")
    tokenizer.chat_template = "{{ messages | length }} {% for m in messages %}{{ m['content'] }} {% endfor %}"
    with pytest.raises(TemplateError, match="prefix"):
        render_chat(tokenizer, CHAT)


@pytest.mark.parametrize(
    "messages, match",
    [
        ([], "non-empty list"),
        ([{"role": "bot", "content": "hi"}], "role"),
        ([{"role": "user", "content": 3}], "content"),
        ([{"role": "user", "content": "good"}], "no non-empty assistant turn"),
    ],
)
def test_bad_conversations_are_refused(messages, match):
    with pytest.raises(TemplateError, match=match):
        check_messages(messages)
