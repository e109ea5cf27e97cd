"""Generation evaluation of causal LMs: greedy answers to held-out prompts, scored against references.

Why next to the loss: a falling response loss says the model puts more probability on the reference
tokens, not that its greedy answer is right. A fixed sample of central test prompts (the same rows
every round, :func:`sample_indices`) is answered greedily after each central evaluation, scored by
exact match, ROUGE-L F1 and token F1, and saved with the answers, so a user can read what the model
says round by round. The export commands (``simulations.generate``/``simulations.evaluate``) call
the same functions, so their answers are the server's answers for the same adapter.

Scoring normalises both texts the same way (:func:`normalize`): lower-cased, whitespace runs
collapsed to one space, stripped. Punctuation is kept, so ``"red."`` does not match ``"red"``.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig

from fedlora.data import end_of_turn_token, pad_token_id
from fedlora.training.local import model_device

log = logging.getLogger(__name__)

METRIC_NAMES = ("gen_exact_match", "gen_rouge_l", "gen_token_f1")


# -- scores ---------------------------------------------------------------------------------------
def normalize(text: str) -> str:
    """Lower-case, collapse whitespace runs to one space, strip (the only normalisation applied)."""
    return " ".join(text.lower().split())


def exact_match(answer: str, reference: str) -> float:
    """1.0 if the normalised texts are equal, else 0.0."""
    return float(normalize(answer) == normalize(reference))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (O(len(a) * len(b)), one row)."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        diag = 0  # row[j - 1] of the previous row
        for j, y in enumerate(b, start=1):
            above = row[j]
            row[j] = diag + 1 if x == y else max(above, row[j - 1])
            diag = above
    return row[-1]


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F1 (beta = 1) over normalised whitespace tokens.

    P = LCS / len(answer), R = LCS / len(reference), F1 = 2PR / (P + R); two empty texts score 1,
    one empty text 0.
    """
    a, r = normalize(answer).split(), normalize(reference).split()
    if not a or not r:
        return float(a == r)
    lcs = lcs_length(a, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def token_f1(answer: str, reference: str) -> float:
    """Bag-of-tokens F1 (SQuAD style: common tokens counted with multiplicity), normalised tokens."""
    a, r = normalize(answer).split(), normalize(reference).split()
    if not a or not r:
        return float(a == r)
    common = sum((Counter(a) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(r)
    return 2 * precision * recall / (precision + recall)


# -- prompts --------------------------------------------------------------------------------------
def inference_prompt(
    row: Mapping[str, Any], tokenizer: Any, system_prompt: str = ""
) -> tuple[list[int], str | None]:
    """Token ids the model sees for ``row`` at inference, and the reference answer (None if absent).

    A canonical held-out row (``prompt``/``response`` or chat ``messages``) is delegated to
    :func:`fedlora.data.chat_tokens.prompt_ids_and_reference`: the exact ids training puts before
    the last assistant turn, so the model is asked the way it was taught. A bare ``{"prompt": ...}``
    (a user's question for :mod:`simulations.generate`) is one user turn, after ``system_prompt``
    when the run trained with one (``data.system_prompt``).
    """
    from fedlora.data.chat_tokens import context_ids, prompt_ids_and_reference

    if "messages" in row or "response" in row:
        ids, reference = prompt_ids_and_reference(row, tokenizer)
        return [int(i) for i in ids], str(reference)
    if "prompt" not in row:
        raise ValueError(f"inference_prompt: expected a 'prompt' or 'messages' row; got {sorted(row)}")
    turns = [{"role": "system", "content": system_prompt}] if system_prompt else []
    turns.append({"role": "user", "content": str(row["prompt"])})
    return [int(i) for i in context_ids(turns, tokenizer, end_of_turn_token(tokenizer))], None


def sample_indices(num_rows: int, k: int, seed: int) -> list[int]:
    """The fixed rows answered at every evaluation: ``k`` of ``num_rows``, seeded, in row order."""
    if k <= 0 or num_rows == 0:
        return []
    if k >= num_rows:
        if k > num_rows:
            log.info("federation.generate_samples=%d but the central test split has %d rows: using all",
                     k, num_rows)
        return list(range(num_rows))
    return sorted(random.Random(seed).sample(range(num_rows), k))


def generation_rows(test: Any, k: int, seed: int) -> list[tuple[int, dict[str, Any]]]:
    """``(row index, row)`` of the ``k`` test rows answered at every evaluation (:func:`sample_indices`).

    Prompt/response and chat ``messages`` rows have a prompt and a reference (:func:`inference_prompt`);
    for plain ``text`` rows generation is turned off, and logged.
    """
    if k <= 0:
        return []
    columns = set(test.column_names)
    if not ({"prompt", "response"} <= columns or "messages" in columns):
        log.warning("generation evaluation is off: it answers prompt/response or chat rows, the test rows "
                    "have columns %s (plain text has no reference answer; federation.generate_samples=%d "
                    "ignored)", sorted(columns), k)
        return []
    return [(i, dict(test[i])) for i in sample_indices(len(test), k, seed)]


def _shown_prompt(row: Mapping[str, Any]) -> dict[str, Any]:
    """What a samples file shows of a row's prompt: the prompt text, or for a chat row the last
    user turn plus the whole context (system prompt and earlier turns) the model was given."""
    if "prompt" in row:
        return {"prompt": str(row["prompt"])}
    messages = list(row["messages"])
    last = max(k for k, m in enumerate(messages) if m["role"] == "assistant")
    users = [m["content"] for m in messages[:last] if m["role"] == "user"]
    return {"prompt": users[-1] if users else "", "context": messages[:last]}


# -- decoding -------------------------------------------------------------------------------------
def stop_token_ids(tokenizer: Any) -> list[int]:
    """Ids that end an answer: eos and the single-token end-of-turn marker training appends."""
    ids = [int(tokenizer.eos_token_id)] if tokenizer.eos_token_id is not None else []
    end = end_of_turn_token(tokenizer)
    if end:
        end_ids = tokenizer(end, add_special_tokens=False)["input_ids"]
        if len(end_ids) == 1 and int(end_ids[0]) not in ids:
            ids.append(int(end_ids[0]))
    return ids


def generate_answers(
    model: torch.nn.Module, tokenizer: Any, prompts: Sequence[Sequence[int]], *,
    max_new_tokens: int, batch_size: int, max_length: int,
) -> list[str]:
    """Greedy answers to tokenized prompts, in batches of ``batch_size`` with left padding.

    A prompt longer than ``max_length`` (``model.max_length``, the longest sequence seen in
    training) keeps its last ``max_length`` tokens, as training keeps a prompt's end; this is
    logged. Each answer is the decoded new tokens up to the first stop token
    (:func:`stop_token_ids`), special tokens skipped, stripped.
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"generate_answers: max_new_tokens and batch_size must be >= 1, got "
                         f"{max_new_tokens} and {batch_size}")
    cut = [list(p)[-max_length:] for p in prompts]
    if long := sum(len(p) > max_length for p in prompts):
        log.warning("generation: %d prompt(s) longer than model.max_length=%d keep only their last %d tokens",
                    long, max_length, max_length)
    if any(not p for p in cut):
        raise ValueError("generate_answers: a prompt has no tokens")
    pad, stops = pad_token_id(tokenizer), stop_token_ids(tokenizer)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              eos_token_id=stops or None, pad_token_id=pad)
    device, answers = model_device(model), []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(cut), batch_size):
                chunk = cut[start:start + batch_size]
                width = max(len(p) for p in chunk)
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for i, p in enumerate(chunk):
                    ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
                    mask[i, width - len(p):] = 1
                out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                     generation_config=config)
                for row in out[:, width:].tolist():
                    end = next((j for j, t in enumerate(row) if t in stops), len(row))
                    answers.append(tokenizer.decode(row[:end], skip_special_tokens=True).strip())
    finally:
        model.train(was_training)
    return answers


def score_generation(
    model: torch.nn.Module, tokenizer: Any, rows: Sequence[tuple[int, Mapping[str, Any]]], *,
    max_new_tokens: int, batch_size: int, max_length: int,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Answer ``(index, row)`` pairs greedily and score them against their references.

    Returns
    -------
    metrics, samples
        ``gen_exact_match``, ``gen_rouge_l``, ``gen_token_f1``: means over the rows; one sample dict
        per row (``index``, ``prompt``, ``reference``, ``answer`` and the three scores).

    Raises
    ------
    ValueError
        If there are no rows or a row has no reference.
    """
    if not rows:
        raise ValueError("score_generation: no rows to answer")
    prompts, samples = [], []
    for index, row in rows:
        ids, reference = inference_prompt(row, tokenizer)
        if reference is None:
            raise ValueError(f"score_generation: row {index} has no reference ('response') to score against")
        prompts.append(ids)
        samples.append({"index": int(index), **_shown_prompt(row), "reference": reference})
    answers = generate_answers(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                               batch_size=batch_size, max_length=max_length)
    for sample, answer in zip(samples, answers, strict=True):
        ref = sample["reference"]
        sample.update(answer=answer, exact_match=exact_match(answer, ref), rouge_l=rouge_l(answer, ref),
                      token_f1=token_f1(answer, ref))
    n = len(samples)
    metrics = {f"gen_{k}": sum(s[k] for s in samples) / n for k in ("exact_match", "rouge_l", "token_f1")}
    return metrics, samples


def samples_path(samples_dir: Path, rnd: int) -> Path:
    """``<samples_dir>/round-003.jsonl`` for round 3."""
    return Path(samples_dir) / f"round-{rnd:03d}.jsonl"


def write_samples(samples_dir: Path, rnd: int, samples: Sequence[Mapping[str, Any]]) -> Path:
    """Write one JSON object per prompt (``round`` first) atomically; return the file."""
    path = samples_path(samples_dir, rnd)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w") as f:
        for sample in samples:
            f.write(json.dumps({"round": rnd, **sample}) + "\n")
    tmp.replace(path)
    return path
