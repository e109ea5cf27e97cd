"""Tokenization and batching: canonical rows -> ``input_ids`` / ``attention_mask`` / ``labels``.

Why here and not in training: the loss mask is a data decision. For causal LM only the response is
learned (prompt positions get label ``-100``; chat rows learn every assistant turn and plain-text rows
every token, see :mod:`fedlora.data.chat_tokens`), using the model's own chat template when it has
one so that fine-tuned adapters answer in the format the model is prompted with at inference. Tokenized
datasets are memoised per tokenizer (weakly) and per dataset fingerprint, because every round of a
simulation re-serves the same client data and re-tokenizing would dominate short rounds.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import datasets
import torch

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
QA_TEMPLATE = "### Question:\n{prompt}\n### Answer:\n"
_SENTINEL = "FEDLORASENTINELXYZ"
_CACHE_PER_TOKENIZER = 64
_CACHE: weakref.WeakKeyDictionary[Any, OrderedDict[tuple, datasets.Dataset]] = weakref.WeakKeyDictionary()
_LOCK = threading.RLock()


def output_features(task: str) -> datasets.Features:
    """Schema of :func:`tokenize_dataset` output (classification labels are scalars)."""
    label = datasets.Value("int64") if task == "classification" else datasets.List(datasets.Value("int64"))
    return datasets.Features(
        {
            "input_ids": datasets.List(datasets.Value("int32")),
            "attention_mask": datasets.List(datasets.Value("int8")),
            "labels": label,
        }
    )


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, falling back to its eos id.

    Raises
    ------
    ValueError
        If the tokenizer has neither a pad nor an eos token.
    """
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    raise ValueError(f"tokenizer '{tokenizer.name_or_path}': has neither a pad_token nor an eos_token")


def ensure_pad_token(tokenizer: Any) -> Any:
    """Set ``tokenizer.pad_token = tokenizer.eos_token`` when it has no pad token; returns the tokenizer."""
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def end_of_turn_token(tokenizer: Any) -> str:
    """The text appended to every response so the model learns to stop.

    With a chat template: the token the template writes right after an assistant message (e.g.
    ``<|im_end|>``, ``<|eot_id|>``, ``<end_of_turn>``) if it is a single token; otherwise, or without a
    template, the eos token (``""`` if there is none).
    """
    eos = tokenizer.eos_token or ""
    if not getattr(tokenizer, "chat_template", None):
        return eos
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _SENTINEL}]
    try:
        rendered = tokenizer.apply_chat_template(conversation, tokenize=False)
    except Exception as err:  # templates may reject this conversation; the eos fallback is safe
        logger.debug("chat template could not render a probe conversation (%s); using eos", err)
        return eos
    tail = rendered.split(_SENTINEL, 1)[1].strip() if _SENTINEL in rendered else ""
    candidate = tail.split()[0] if tail else ""
    if candidate and len(tokenizer(candidate, add_special_tokens=False)["input_ids"]) == 1:
        return candidate
    return eos


def _adds_bos(tokenizer: Any) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]


def _input_ids(encoded: Any) -> list[list[int]]:
    """``input_ids`` from what ``apply_chat_template(tokenize=True)`` returns (BatchEncoding or lists)."""
    ids = encoded["input_ids"] if isinstance(encoded, Mapping) else encoded
    ids = ids.tolist() if hasattr(ids, "tolist") else ids
    if ids and isinstance(ids[0], int):
        ids = [ids]
    return [list(row) for row in ids]


def fit_lengths(prompt: list[int], response: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """Truncate a prompt/response pair to ``max_length`` tokens, prompt side first.

    The prompt loses tokens from its start (its end holds the generation prompt), down to
    ``min(len(prompt), max_length // 2)`` tokens; only then is the response cut from its end.
    """
    if len(prompt) + len(response) <= max_length:
        return prompt, response
    min_prompt = min(len(prompt), max_length // 2)
    keep_response = min(len(response), max_length - min_prompt)
    keep_prompt = max_length - keep_response
    return prompt[len(prompt) - keep_prompt :], response[:keep_response]


def _causal_batch(batch: dict[str, list], tokenizer: Any, max_length: int, end_token: str) -> dict[str, list]:
    if getattr(tokenizer, "chat_template", None):
        conversations = [[{"role": "user", "content": p}] for p in batch["prompt"]]
        prompts = _input_ids(
            tokenizer.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True)
        )
    else:
        texts = [QA_TEMPLATE.format(prompt=p) for p in batch["prompt"]]
        bos = [tokenizer.bos_token_id] if _adds_bos(tokenizer) else []
        prompts = [bos + ids for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    responses = tokenizer([r + end_token for r in batch["response"]], add_special_tokens=False)["input_ids"]
    out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
    for prompt, response in zip(prompts, responses, strict=True):
        prompt, response = fit_lengths(list(prompt), list(response), max_length)
        if not response:
            continue
        out["input_ids"].append(prompt + response)
        out["attention_mask"].append([1] * (len(prompt) + len(response)))
        out["labels"].append([IGNORE_INDEX] * len(prompt) + response)
    return out


def _classification_batch(batch: dict[str, list], tokenizer: Any, max_length: int) -> dict[str, list]:
    encoded = tokenizer(batch["text"], truncation=True, max_length=max_length)
    ids = encoded["input_ids"]
    mask = encoded.get("attention_mask") or [[1] * len(row) for row in ids]
    return {"input_ids": ids, "attention_mask": mask, "labels": [int(v) for v in batch["label"]]}


def _cache_key(ds: datasets.Dataset, tokenizer: Any, task: str, max_length: int) -> tuple:
    template = getattr(tokenizer, "chat_template", None) or ""
    return (
        ds._fingerprint,
        str(tokenizer.name_or_path),
        len(tokenizer),
        hash(str(template)),
        task,
        max_length,
    )


def tokenize_dataset(ds: datasets.Dataset, tokenizer: Any, task: str, max_length: int) -> datasets.Dataset:
    """Tokenize canonical rows for training or evaluation (memoised per process).

    Parameters
    ----------
    ds : datasets.Dataset
        Classification: columns ``text``, ``label``. Causal LM: ``prompt``, ``response``, or
        ``messages`` (chat turns) or ``text`` (see :mod:`fedlora.data.chat_formats`).
    tokenizer : transformers.PreTrainedTokenizerBase
        Any fast or slow Hugging Face tokenizer.
    task : str
        ``"classification"`` or ``"causal_lm"``.
    max_length : int
        Maximum tokens per row (``model.max_length``).

    Returns
    -------
    datasets.Dataset
        Exactly the columns ``input_ids``, ``attention_mask``, ``labels`` (python lists / ints).
        Causal LM: ``labels`` is ``-100`` on prompt tokens and the token id on response tokens (the
        response ends with the end-of-turn token, see :func:`end_of_turn_token`); rows left without any
        response token after truncation are dropped. Chat rows label every assistant turn, text rows
        every token (:mod:`fedlora.data.chat_tokens`).
    """
    from fedlora.data import chat_tokens  # imports this module
    from fedlora.data.chat_formats import SHAPES, causal_shape

    if task not in ("classification", "causal_lm"):
        raise ValueError(f"model.task: expected 'classification' or 'causal_lm', got {task!r}")
    shape = causal_shape(ds.column_names) if task == "causal_lm" else None
    if shape is None and not (task == "classification" and {"text", "label"} <= set(ds.column_names)):
        needs = [["text", "label"]] if task == "classification" else [list(c) for c in SHAPES.values()]
        raise ValueError(
            f"tokenize_dataset: task '{task}' needs columns {' or '.join(map(str, needs))}, "
            f"dataset has {ds.column_names}"
        )
    if max_length < 2:
        raise ValueError(f"model.max_length: expected >= 2, got {max_length}")
    if len(ds) == 0:
        return datasets.Dataset.from_dict({name: [] for name in output_features(task)}, output_features(task))
    key = _cache_key(ds, tokenizer, task, max_length)
    with _LOCK:
        per_tokenizer = _CACHE.setdefault(tokenizer, OrderedDict())
        if key in per_tokenizer:
            per_tokenizer.move_to_end(key)
            return per_tokenizer[key]
    end_token = end_of_turn_token(tokenizer) if task == "causal_lm" else ""

    def fn(batch: dict[str, list]) -> dict[str, list]:
        if task == "classification":
            return _classification_batch(batch, tokenizer, max_length)
        if shape == "chat":
            return chat_tokens.chat_batch(batch, tokenizer, max_length, end_token)
        if shape == "text":
            return chat_tokens.text_batch(batch, tokenizer, max_length)
        return _causal_batch(batch, tokenizer, max_length, end_token)

    out = ds.map(
        fn,
        batched=True,
        remove_columns=ds.column_names,
        features=output_features(task),
        keep_in_memory=True,
        load_from_cache_file=False,
        new_fingerprint=hashlib.sha256(repr(key).encode()).hexdigest()[:32],
        desc=f"tokenize ({task})",
    )
    if len(out) < len(ds):
        logger.warning("tokenize_dataset: dropped %d rows with no response tokens left", len(ds) - len(out))
    with _LOCK:
        per_tokenizer = _CACHE.setdefault(tokenizer, OrderedDict())
        per_tokenizer[key] = out
        while len(per_tokenizer) > _CACHE_PER_TOKENIZER:
            per_tokenizer.popitem(last=False)
    return out


def make_collator(tokenizer: Any, task: str) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
    """A collate function that right-pads a list of tokenized rows into ``torch.long`` tensors.

    Parameters
    ----------
    tokenizer : transformers.PreTrainedTokenizerBase
        Supplies the pad id (eos if there is no pad token).
    task : str
        ``"classification"``: ``labels`` is a 1-D tensor of class ids. ``"causal_lm"``: ``labels`` is
        padded with ``-100``.

    Returns
    -------
    Callable[[list[dict]], dict[str, torch.Tensor]]
        ``input_ids`` (padded with the pad id), ``attention_mask`` (padded with 0), ``labels``.
    """
    if task not in ("classification", "causal_lm"):
        raise ValueError(f"model.task: expected 'classification' or 'causal_lm', got {task!r}")
    pad_id = pad_token_id(tokenizer)

    def collate(features: list[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("collate: empty batch")
        width = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(features), width), dtype=torch.long)
        labels = (
            torch.tensor([int(f["labels"]) for f in features], dtype=torch.long)
            if task == "classification"
            else torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        )
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            input_ids[row, :n] = torch.as_tensor(feature["input_ids"], dtype=torch.long)
            attention[row, :n] = torch.as_tensor(feature.get("attention_mask") or [1] * n, dtype=torch.long)
            if task == "causal_lm":
                labels[row, :n] = torch.as_tensor(feature["labels"], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}

    return collate


def clear_cache() -> None:
    """Forget memoised tokenized datasets."""
    with _LOCK:
        _CACHE.clear()
