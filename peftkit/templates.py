"""Chat templates and instruction-data rendering for `task: causal-lm`, with the loss on the responses only.

A conversation is a list of `{"role": "system" | "user" | "assistant", "content": str}` messages (a
prompt/response pair is one user and one assistant turn). It is rendered with the tokenizer's own chat
template, or with one of `TEMPLATES` when the tokenizer has none or the recipe names one
(`data.chat_template`); the chosen template is set on the tokenizer, so the saved adapter's tokenizer
renders prompts the same way at inference.

`render_chat` tokenizes the conversation segment by segment: the text up to each assistant turn (what the
template gives with `add_generation_prompt=True`, the exact prompt seen at generation time) gets label -100,
the assistant turn itself is trained. A rendered conversation that does not end with EOS gets one appended
and trained, so the model learns to stop.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from peftkit.config import ConfigError

IGNORE_INDEX = -100
"""Label of tokens left out of the loss (transformers' cross-entropy `ignore_index`)."""

ROLES = ("system", "user", "assistant")

# Jinja chat templates by name. Both close an assistant turn with the tokenizer's EOS, so that generation
# stops there (in ChatML models EOS is `<|im_end|>` itself).
TEMPLATES: dict[str, str] = {
    # Alpaca-style plain text; works with any tokenizer, no special tokens needed beyond BOS/EOS.
    "plain": (
        "{% if bos_token %}{{ bos_token }}{% endif %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
        "{% elif message['role'] == 'user' %}### Instruction:\n{{ message['content'] }}\n\n### Response:\n"
        "{% else %}{{ message['content'] }}{{ eos_token }}\n\n{% endif %}"
        "{% endfor %}"
    ),
    # ChatML (OpenAI, Qwen, SmolLM2-Instruct): <|im_start|>role\ncontent<|im_end|>
    "chatml": (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
        "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %}<|im_end|>{% endif %}{{ '\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
}


class TemplateError(ValueError):
    """A conversation or template that cannot be rendered with a response-only loss; the message says why."""


@dataclass
class RenderedChat:
    input_ids: list[int]
    labels: list[int]
    """`input_ids` with IGNORE_INDEX on every token outside an assistant turn."""


def use_chat_template(tokenizer: PreTrainedTokenizerBase, name: str) -> str:
    """Set the chat template `name` picks on `tokenizer` (`auto`: its own, else `plain`); returns what it used."""
    if name == "auto":
        if tokenizer.chat_template:
            return "tokenizer"
        name = "plain"
    if name not in TEMPLATES:
        raise ConfigError(f"data.chat_template: {name!r} is not 'auto' or one of {', '.join(TEMPLATES)}")
    tokenizer.chat_template = TEMPLATES[name]
    return name


def prompt_response_messages(prompt: str, response: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def check_messages(messages) -> None:
    """Refuse a conversation that is not a list of {role, content} messages with an assistant turn."""
    if not isinstance(messages, list) or not messages:
        raise TemplateError(f"a conversation must be a non-empty list of messages, got {messages!r}")
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise TemplateError(f"message {message!r}: needs a 'role' in {ROLES} and a 'content' string")
        if not isinstance(message.get("content"), str):
            raise TemplateError(f"message {message!r}: 'content' must be a string")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise TemplateError("a conversation has no non-empty assistant turn: there is nothing to train on")


def render_text(tokenizer: PreTrainedTokenizerBase, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )  # fmt: skip


def render_chat(tokenizer: PreTrainedTokenizerBase, messages: list[dict]) -> RenderedChat:
    """Token ids of the conversation and labels that train every assistant turn (and the final EOS) only."""
    check_messages(messages)
    input_ids: list[int] = []
    labels: list[int] = []
    done = ""  # text rendered and tokenized so far
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render_text(tokenizer, messages[:i], generation_prompt=True)
        full = render_text(tokenizer, messages[: i + 1], generation_prompt=False).rstrip()
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise TemplateError(
                "the chat template does not render a conversation as a prefix of its continuation, so the "
                "response tokens cannot be told apart; set data.chat_template to one of "
                f"{', '.join(TEMPLATES)}"
            )
        prompt_ids = _encode(tokenizer, prompt[len(done) :])
        response_ids = _encode(tokenizer, full[len(prompt) :])
        input_ids += prompt_ids + response_ids
        labels += [IGNORE_INDEX] * len(prompt_ids) + response_ids
        done = full
    eos = tokenizer.eos_token_id
    if eos is not None and input_ids[-1] != eos:
        input_ids.append(eos)
        labels.append(eos)
    return RenderedChat(input_ids=input_ids, labels=labels)


def generation_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict]) -> tuple[list[int], str]:
    """(prompt token ids, reference answer): the conversation up to its last assistant turn, and that turn."""
    check_messages(messages)
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    prompt = render_text(tokenizer, messages[:last], generation_prompt=True)
    return _encode(tokenizer, prompt), messages[last]["content"]


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    # the template writes BOS/EOS itself: no special tokens added on top
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def describe_template(tokenizer: PreTrainedTokenizerBase, placeholder: str = "{prompt}") -> dict:
    """How the tokenizer renders prompts, for model cards: its chat template's name (one of `TEMPLATES`,
    else `tokenizer`: the base model's own) and one user turn rendered up to the generation prompt."""
    name = next((n for n, text in TEMPLATES.items() if text == tokenizer.chat_template), "tokenizer")
    example = render_text(tokenizer, [{"role": "user", "content": placeholder}], generation_prompt=True)
    return {"chat_template": name, "example": example}
