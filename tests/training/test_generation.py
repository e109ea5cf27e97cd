"""Generation evaluation: scores against hand-computed values, prompts as in training, greedy decoding."""

from __future__ import annotations

import copy
import functools
import json
import logging
import random

import datasets
import pytest
import torch

from fedlora.config import compose
from fedlora.data import tokenize_dataset
from fedlora.training.generation import (
    exact_match,
    generate_answers,
    generation_rows,
    inference_prompt,
    lcs_length,
    normalize,
    rouge_l,
    sample_indices,
    score_generation,
    stop_token_ids,
    token_f1,
)

CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant: {% endif %}")


@pytest.fixture(scope="module")
def lm_cfg():
    return compose(["preset=smoke_llm"])


@pytest.fixture
def tokenizer(lm_cfg):
    from fedlora.models.build import load_tokenizer

    return load_tokenizer(lm_cfg.model)


# -- scores ----------------------------------------------------------------------------------------
def test_exact_match_normalises_case_and_whitespace_only():
    assert normalize("  The \t Cat\nsat ") == "the cat sat"
    assert exact_match("  The  Cat\n", "the cat") == 1.0
    assert exact_match("the cat.", "the cat") == 0.0  # punctuation is kept
    assert exact_match("", "") == 1.0


def test_rouge_l_against_hand_computed_values():
    # LCS "the cat on the mat" = 5 of 6 tokens each side: P = R = 5/6.
    assert rouge_l("The cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # LCS 1; P = 1/1, R = 1/4 -> F1 = 2 * 0.25 / 1.25 = 0.4.
    assert rouge_l("red", "the color is red") == pytest.approx(0.4)
    # order matters: LCS of [a b c] and [c b a] is 1 -> P = R = 1/3.
    assert rouge_l("a b c", "c b a") == pytest.approx(1 / 3)
    assert rouge_l("x y", "p q") == 0.0
    assert rouge_l("", "") == 1.0 and rouge_l("", "a") == 0.0 and rouge_l("a", "") == 0.0


def test_token_f1_counts_multiplicity():
    # common = min(2,1) for a + min(1,2) for b = 2; P = 2/3, R = 2/4 -> F1 = 4/7.
    assert token_f1("a a b", "a b b c") == pytest.approx(4 / 7)
    assert token_f1("c b a", "a b c") == 1.0  # bag of words: order ignored, unlike ROUGE-L
    assert token_f1("x", "y") == 0.0


def test_lcs_matches_exhaustive_recursion():
    def brute(a: tuple, b: tuple) -> int:
        @functools.cache
        def go(i: int, j: int) -> int:
            if i == len(a) or j == len(b):
                return 0
            return go(i + 1, j + 1) + 1 if a[i] == b[j] else max(go(i + 1, j), go(i, j + 1))
        return go(0, 0)

    rng = random.Random(0)
    for _ in range(200):
        a = tuple(rng.choice("abcd") for _ in range(rng.randint(0, 9)))
        b = tuple(rng.choice("abcd") for _ in range(rng.randint(0, 9)))
        assert lcs_length(a, b) == brute(a, b), (a, b)


def test_sample_indices_are_fixed_by_the_seed():
    first = sample_indices(100, 8, seed=3)
    assert first == sample_indices(100, 8, seed=3) == sorted(first) and len(set(first)) == 8
    assert first == sorted(random.Random(3).sample(range(100), 8))
    assert sample_indices(100, 8, seed=4) != first
    assert sample_indices(5, 8, seed=0) == [0, 1, 2, 3, 4]
    assert sample_indices(5, 0, seed=0) == [] and sample_indices(0, 3, seed=0) == []


def test_generation_rows_refuse_rows_without_prompt_and_response(caplog):
    text = datasets.Dataset.from_dict({"text": ["a", "b", "c"]})
    with caplog.at_level(logging.WARNING):
        assert generation_rows(text, 2, 0) == []
    assert "generation evaluation is off" in caplog.text and "['text']" in caplog.text
    pairs = datasets.Dataset.from_dict({"prompt": list("abcde"), "response": list("ABCDE")})
    rows = generation_rows(pairs, 2, 7)
    assert [i for i, _ in rows] == sample_indices(5, 2, 7)
    assert all(row == {"prompt": pairs[i]["prompt"], "response": pairs[i]["response"]} for i, row in rows)


# -- prompts are the training prompts ---------------------------------------------------------------
def _training_prompt_ids(tokenizer, prompts: list[str]) -> list[list[int]]:
    """The prompt part of tokenized training rows: the input ids whose label is -100."""
    ds = datasets.Dataset.from_dict({"prompt": prompts, "response": ["The answer is four."] * len(prompts)})
    out = tokenize_dataset(ds, tokenizer, "causal_lm", max_length=512)
    return [[t for t, lab in zip(r["input_ids"], r["labels"], strict=True) if lab == -100] for r in out]


@pytest.mark.parametrize("template", [None, CHAT_TEMPLATE], ids=["qa-template", "chat-template"])
def test_inference_prompt_is_the_training_prompt(tokenizer, template):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = template
    prompts = ["What is 2 plus 2?", "Which city is the capital of France?"]
    expected = _training_prompt_ids(tok, prompts)
    for prompt, ids in zip(prompts, expected, strict=True):
        got, reference = inference_prompt({"prompt": prompt, "response": "Four."}, tok)
        assert got == ids and reference == "Four."
    assert inference_prompt({"prompt": "hi"}, tok)[1] is None
    if template:
        assert tok.decode(expected[0]).endswith("assistant: ")
    with pytest.raises(ValueError, match="no assistant turn"):
        inference_prompt({"messages": []}, tok)
    # a chat row is asked up to its last assistant turn; a bare prompt after the run's system prompt
    # is the same question as the chat row that starts with that system turn
    chat = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompts[0]},
                         {"role": "assistant", "content": "Four."}]}
    ids, reference = inference_prompt(chat, tok)
    assert reference == "Four." and ids == inference_prompt({"prompt": prompts[0]}, tok, "Be brief.")[0]
    assert ids != expected[0]  # the system turn is in the prompt


# -- decoding -------------------------------------------------------------------------------------
class StubLM(torch.nn.Module):
    """``generate`` appends fixed continuations (one per row) and records what it was given."""

    def __init__(self, continuations: list[list[int]]):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.continuations = continuations
        self.calls: list[tuple[torch.Tensor, torch.Tensor, object]] = []

    def generate(self, input_ids, attention_mask, generation_config):
        self.calls.append((input_ids, attention_mask, generation_config))
        start = sum(len(ids) for ids, _, _ in self.calls[:-1])
        new = torch.tensor(self.continuations[start:start + len(input_ids)])
        return torch.cat([input_ids, new], dim=1)


def test_answers_are_cut_at_eos_and_left_padded(tokenizer):
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    word = tokenizer("cat", add_special_tokens=False)["input_ids"]
    dog = tokenizer(" dog", add_special_tokens=False)["input_ids"]
    assert stop_token_ids(tokenizer) == [eos]  # no chat template: the end of turn is eos
    continuations = [[*word, *dog, eos], [*word, eos, *dog]]  # the second stops before " dog"
    width = max(len(c) for c in continuations)
    continuations = [c + [pad] * (width - len(c)) for c in continuations]
    model = StubLM(continuations)
    answers = generate_answers(model, tokenizer, [[5, 6, 7], [8]], max_new_tokens=4, batch_size=8,
                               max_length=48)
    assert answers == ["cat dog", "cat"]
    ids, mask, config = model.calls[0]
    assert ids.tolist() == [[5, 6, 7], [pad, pad, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert config.do_sample is False and config.num_beams == 1 and config.max_new_tokens == 4


def test_stop_ids_include_a_chat_templates_end_of_turn(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = CHAT_TEMPLATE.replace("</s>", "<unk>")  # end of turn: a token other than eos
    assert stop_token_ids(tok) == [tok.eos_token_id, tok.convert_tokens_to_ids("<unk>")]


def test_batches_of_batch_size_and_long_prompts_keep_their_end(tokenizer, caplog):
    eos = tokenizer.eos_token_id
    model = StubLM([[eos]] * 3)
    with caplog.at_level(logging.WARNING):
        generate_answers(model, tokenizer, [list(range(10, 70)), [9], [8]], max_new_tokens=1, batch_size=2,
                         max_length=48)
    assert [len(ids) for ids, _, _ in model.calls] == [2, 1]
    assert model.calls[0][0][0].tolist() == list(range(22, 70))  # the last 48 tokens
    assert "1 prompt(s) longer than model.max_length=48" in caplog.text


def test_greedy_batched_answers_equal_a_manual_argmax_loop(lm_cfg, tokenizer):
    from fedlora.lora.state import expected_shapes, set_lora_state
    from fedlora.models.build import build_lora_model

    model = build_lora_model(lm_cfg.model, lm_cfg.lora, rank=4)
    gen = torch.Generator().manual_seed(0)
    set_lora_state(model, {k: 0.3 * torch.randn(s, generator=gen) for k, s in expected_shapes(model).items()})
    prompts = [inference_prompt({"prompt": p}, tokenizer)[0]
               for p in ("What is 2 plus 3?", "Hi", "What is the color of the big apple?")]
    # max_length above every prompt: the loop below sees the same, untruncated prompts
    answers = generate_answers(model, tokenizer, prompts, max_new_tokens=6, batch_size=3, max_length=256)
    assert len({len(p) for p in prompts}) == 3 and any(answers)  # left padding really happens
    stops = set(stop_token_ids(tokenizer))
    for prompt, answer in zip(prompts, answers, strict=True):
        ids, new = list(prompt), []
        with torch.inference_mode():
            for _ in range(6):  # no padding, no cache: the full sequence each step
                nxt = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
                if nxt in stops:
                    break
                ids.append(nxt)
                new.append(nxt)
        assert answer == tokenizer.decode(new, skip_special_tokens=True).strip()


def test_score_generation_means_of_per_sample_scores(tokenizer):
    eos = tokenizer.eos_token_id
    answers = ["The cat sat on the mat", "red", "Four."]
    encoded = [tokenizer(a, add_special_tokens=False)["input_ids"] + [eos] for a in answers]
    width = max(len(e) for e in encoded)
    model = StubLM([e + [eos] * (width - len(e)) for e in encoded])
    rows = [(4, {"prompt": "p1", "response": "the cat is on the mat"}),
            (9, {"prompt": "p2", "response": "the color is red"}),
            (11, {"prompt": "p3", "response": "four."})]
    metrics, samples = score_generation(model, tokenizer, rows, max_new_tokens=width, batch_size=2,
                                        max_length=48)
    assert [s["answer"] for s in samples] == answers
    assert [s["index"] for s in samples] == [4, 9, 11]
    assert metrics["gen_exact_match"] == pytest.approx(1 / 3)
    assert metrics["gen_rouge_l"] == pytest.approx((5 / 6 + 0.4 + 1.0) / 3)
    assert metrics["gen_token_f1"] == pytest.approx((5 / 6 + 0.4 + 1.0) / 3)  # same counts here
    json.dumps(samples)  # plain JSON values
    with pytest.raises(ValueError, match="no reference"):
        score_generation(model, tokenizer, [(0, {"prompt": "p"})], max_new_tokens=1, batch_size=1,
                         max_length=48)
