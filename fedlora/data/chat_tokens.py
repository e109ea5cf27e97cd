"""Tokens and loss masks for multi-turn chat rows and plain text; what a model is prompted with.

Why a conversation is built turn by turn: the loss must fall on every assistant turn and on nothing
else, and the tokens before each assistant turn should be exactly what the model is shown at
inference, i.e. the chat template's rendering of the conversation so far *with* its generation
prompt. So for the k-th assistant turn the context is rendered with ``add_generation_prompt=True``;
the part of it not yet in the sequence is appended masked, then the assistant content plus the
end-of-turn token (:func:`fedlora.data.formatting.end_of_turn_token`) is appended labelled. A single
user/assistant exchange gives exactly the tokens of a ``prompt``/``response`` row.

A template that rewrites earlier turns (e.g. one that drops reasoning from past answers) cannot be
built this way; such a conversation is learned on its last assistant turn only, with a warning.
Tokenizers without a chat template use the ``### Question:`` / ``### Answer:`` layout of
:data:`fedlora.data.formatting.QA_TEMPLATE`, extended with ``### System:``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fedlora.data.chat_formats import causal_shape
from fedlora.data.formatting import (
    IGNORE_INDEX,
    QA_TEMPLATE,
    _adds_bos,
    _input_ids,
    end_of_turn_token,
    fit_lengths,
)

logger = logging.getLogger(__name__)

SYSTEM_TEMPLATE = "### System:\n{content}\n"
ANSWER_PREFIX = QA_TEMPLATE.split("{prompt}", 1)[1].lstrip("\n")  # "### Answer:\n"


class _NotPrefixStable(Exception):
    """The template renders an earlier turn differently once later turns follow."""


def _fallback_text(messages: Sequence[Mapping[str, str]], end_token: str) -> str:
    """The no-template layout of ``messages`` followed by the answer prompt (no BOS)."""
    parts = []
    for m in messages:
        if m["role"] == "system":
            parts.append(SYSTEM_TEMPLATE.format(content=m["content"]))
        elif m["role"] == "user":
            parts.append(QA_TEMPLATE.format(prompt=m["content"]).removesuffix(ANSWER_PREFIX))
        else:
            parts.append(f"{ANSWER_PREFIX}{m['content']}{end_token}\n")
    return "".join(parts) + ANSWER_PREFIX


def _template(tokenizer: Any, messages: list[dict[str, str]], tokenize: bool) -> Any:
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=tokenize)
    except Exception as err:  # jinja raises for roles/orders a template refuses (e.g. no system role)
        roles = [m["role"] for m in messages]
        raise ValueError(
            f"data.format: the chat template of tokenizer '{tokenizer.name_or_path}' cannot render a "
            f"conversation with roles {roles} ({type(err).__name__}: {err}); drop data.system_prompt or "
            "the turns it refuses"
        ) from err


def context_text(messages: Sequence[Mapping[str, str]], tokenizer: Any, end_token: str | None = None) -> str:
    """The text a model is shown before an assistant turn that follows ``messages``.

    With a chat template: its rendering with the generation prompt (BOS included if the template writes
    it). Without: the ``### Question:`` layout, preceded by the BOS token text when the tokenizer adds
    one. Tokenized with ``add_special_tokens=False`` it gives the prompt tokens used in training.
    """
    turns = [{"role": m["role"], "content": m["content"]} for m in messages]
    if getattr(tokenizer, "chat_template", None):
        return _template(tokenizer, turns, tokenize=False)
    end = end_of_turn_token(tokenizer) if end_token is None else end_token
    bos = tokenizer.bos_token if _adds_bos(tokenizer) else ""
    return bos + _fallback_text(turns, end)


def context_ids(messages: Sequence[Mapping[str, str]], tokenizer: Any, end_token: str) -> list[int]:
    """Token ids of :func:`context_text`, computed as training computes them."""
    turns = [{"role": m["role"], "content": m["content"]} for m in messages]
    if getattr(tokenizer, "chat_template", None):
        return _input_ids(_template(tokenizer, turns, tokenize=True))[0]
    bos = [tokenizer.bos_token_id] if _adds_bos(tokenizer) else []
    return bos + tokenizer(_fallback_text(turns, end_token), add_special_tokens=False)["input_ids"]


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _all_turns(messages: list[dict[str, str]], tokenizer: Any, end_token: str) -> tuple[list, list, list]:
    """``(prefix ids, prefix labels, last response ids)`` with every assistant turn labelled."""
    ids: list[int] = []
    labels: list[int] = []
    done = ""  # the text already in ``ids``, as the template wrote it
    answers = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
    for n, k in enumerate(answers):
        content = messages[k]["content"]
        if n == 0:
            segment = context_ids(messages[:k], tokenizer, end_token)
            text = context_text(messages[:k], tokenizer, end_token)
        else:
            text = context_text(messages[:k], tokenizer, end_token)
            if not text.startswith(done):
                raise _NotPrefixStable
            rest = text[len(done) :]
            segment = _encode(tokenizer, rest.removeprefix(end_token) if end_token else rest)
        response = _encode(tokenizer, content + end_token)
        if n < len(answers) - 1:
            ids += segment + response
            labels += [IGNORE_INDEX] * len(segment) + response
            done = text + content
        else:
            return ids + segment, labels + [IGNORE_INDEX] * len(segment), response
    raise ValueError("chat row without an assistant turn (canonical rows always end with one)")


def _chat_row(messages: list[dict[str, str]], tokenizer: Any, max_length: int, end_token: str,
              fallbacks: list[int]) -> tuple[list[int], list[int]]:  # fmt: skip
    try:
        prefix, prefix_labels, response = _all_turns(messages, tokenizer, end_token)
    except _NotPrefixStable:
        fallbacks.append(1)
        last = max(k for k, m in enumerate(messages) if m["role"] == "assistant")
        prefix = context_ids(messages[:last], tokenizer, end_token)
        prefix_labels = [IGNORE_INDEX] * len(prefix)
        response = _encode(tokenizer, messages[last]["content"] + end_token)
    kept, response = fit_lengths(prefix, response, max_length)
    return kept + response, prefix_labels[len(prefix) - len(kept) :] + response


def chat_batch(batch: dict[str, list], tokenizer: Any, max_length: int, end_token: str) -> dict[str, list]:
    """Tokenize a batch of ``messages`` rows: labels on every assistant turn + its end-of-turn token.

    Truncation follows :func:`fedlora.data.formatting.fit_lengths` with everything before the last
    assistant turn as the prompt (earliest tokens go first); rows left without labels are dropped.
    """
    out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
    fallbacks: list[int] = []
    for messages in batch["messages"]:
        ids, labels = _chat_row(list(messages), tokenizer, max_length, end_token, fallbacks)
        if all(label == IGNORE_INDEX for label in labels):
            continue
        out["input_ids"].append(ids)
        out["attention_mask"].append([1] * len(ids))
        out["labels"].append(labels)
    if fallbacks:
        logger.warning(
            "chat template of '%s' renders earlier turns differently once later turns follow: %d of %d "
            "conversations are learned on their last assistant turn only",
            tokenizer.name_or_path, len(fallbacks), len(batch["messages"]),
        )  # fmt: skip
    return out


def text_batch(batch: dict[str, list], tokenizer: Any, max_length: int) -> dict[str, list]:
    """Tokenize plain ``text`` rows (BOS if the tokenizer adds one, EOS appended); every token is a label.

    Rows longer than ``max_length`` keep their first ``max_length`` tokens.
    """
    bos = [tokenizer.bos_token_id] if _adds_bos(tokenizer) else []
    eos = tokenizer.eos_token or ""
    encoded = tokenizer([t + eos for t in batch["text"]], add_special_tokens=False)["input_ids"]
    rows = [(bos + list(ids))[:max_length] for ids in encoded]
    mask = [[1] * len(r) for r in rows]
    return {"input_ids": rows, "attention_mask": mask, "labels": [list(r) for r in rows]}


def _split(row: Mapping[str, Any]) -> tuple[list[dict[str, str]], str]:
    shape = causal_shape(list(row))
    if shape == "pair":
        return [{"role": "user", "content": row["prompt"]}], row["response"]
    if shape == "chat":
        messages = list(row["messages"])
        last = max((k for k, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
        if last < 0:
            raise ValueError("prompt_and_reference: the conversation has no assistant turn")
        return messages[:last], messages[last]["content"]
    raise ValueError(
        f"prompt_and_reference: expected a canonical prompt/response or messages row, got columns "
        f"{list(row)} (plain-text rows, data.format=text, have no prompt and reference answer)"
    )


def prompt_and_reference(row: Mapping[str, Any], tokenizer: Any) -> tuple[str, str]:
    """The prompt a model should be given for a held-out row, and the reference answer.

    Parameters
    ----------
    row : Mapping[str, Any]
        One canonical causal-LM row (``prompt``/``response`` or ``messages``), e.g. ``ds[i]`` of a
        client's ``heldout`` or the central test set; ``data.system_prompt`` is already in it.
    tokenizer : transformers.PreTrainedTokenizerBase

    Returns
    -------
    tuple[str, str]
        The conversation up to the start of the last assistant turn, rendered as in training with the
        generation prompt (tokenize it with ``add_special_tokens=False``), and that turn's content.
    """
    messages, reference = _split(row)
    return context_text(messages, tokenizer), reference


def prompt_ids_and_reference(row: Mapping[str, Any], tokenizer: Any) -> tuple[list[int], str]:
    """:func:`prompt_and_reference` with the prompt as the exact token ids training uses before the answer."""
    messages, reference = _split(row)
    return context_ids(messages, tokenizer, end_of_turn_token(tokenizer)), reference
