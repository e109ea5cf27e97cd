"""Small deterministic datasets generated in code, for tests and smoke runs.

Why: tests and CI must not depend on installed corpora or the network, yet they need data with real
signal (a tiny model must be able to learn it) and a natural non-IID split (so ``by_field`` and
per-group behaviour can be exercised). Everything here is a pure function of ``seed``.
"""

from __future__ import annotations

import datasets
import numpy as np

CLASS_LABELS = ("negative", "neutral", "positive")
CLASS_WORDS: dict[str, tuple[str, ...]] = {
    "negative": ("bad", "terrible", "awful", "hate", "horrible", "worst", "broken", "rude", "late", "sad"),
    "neutral": ("okay", "average", "normal", "usual", "standard", "plain", "typical", "fine", "so-so"),
    "positive": ("good", "great", "love", "excellent", "happy", "wonderful", "best", "friendly", "nice"),
}
NOISE_WORDS = (
    "the", "a", "flight", "phone", "car", "game", "today", "service", "really", "very", "this", "that",
    "was", "is", "my", "our", "seat", "screen", "road", "team", "again", "just", "with", "and",
)  # fmt: skip
#: source group -> probabilities of (negative, neutral, positive): different label mixes per group.
SOURCE_MIX: dict[str, tuple[float, float, float]] = {
    "alpha": (0.6, 0.2, 0.2),
    "beta": (0.2, 0.6, 0.2),
    "gamma": (0.2, 0.2, 0.6),
    "delta": (0.34, 0.33, 0.33),
}

COLORS = {
    "apple": "red", "banana": "yellow", "grass": "green", "sky": "blue", "snow": "white",
    "coal": "black", "orange": "orange", "plum": "purple", "cloud": "grey", "lemon": "yellow",
    "cherry": "red", "leaf": "green", "ocean": "blue", "milk": "white", "crow": "black",
    "pumpkin": "orange", "grape": "purple", "rose": "red", "lime": "green", "ash": "grey",
}  # fmt: skip
SIZES = ("big", "small", "old", "new", "shiny")
SOUNDS = {
    "dog": "woof", "cat": "meow", "cow": "moo", "duck": "quack", "sheep": "baa",
    "owl": "hoot", "lion": "roar", "horse": "neigh", "pig": "oink", "mouse": "squeak",
    "frog": "ribbit", "snake": "hiss", "bee": "buzz", "goat": "bleat", "wolf": "howl",
    "crow": "caw", "chick": "cheep", "donkey": "bray", "dove": "coo", "bear": "growl",
}  # fmt: skip
CAPITALS = {
    "France": "Paris", "Spain": "Madrid", "Italy": "Rome", "Germany": "Berlin", "Japan": "Tokyo",
    "Egypt": "Cairo", "Kenya": "Nairobi", "Peru": "Lima", "Canada": "Ottawa", "Norway": "Oslo",
    "Greece": "Athens", "Poland": "Warsaw", "Chile": "Santiago", "Cuba": "Havana", "Ireland": "Dublin",
    "Austria": "Vienna", "Portugal": "Lisbon", "Sweden": "Stockholm", "Mexico": "Mexico City",
    "India": "New Delhi",
}  # fmt: skip
CAPITAL_TEMPLATES = (
    "What is the capital of {c}?",
    "Which city is the capital of {c}?",
    "Name the capital of {c}.",
    "Tell me the capital of {c}.",
    "What city is {c}'s capital?",
)


def synthetic_classification(seed: int, rows: int = 600) -> datasets.Dataset:
    """Short texts whose label words come from per-label vocabularies, plus shared noise words.

    Parameters
    ----------
    seed : int
        Seeds a ``numpy`` generator; the same seed gives the same rows in any process.
    rows : int
        Number of rows, split evenly over the four ``source`` groups.

    Returns
    -------
    datasets.Dataset
        Columns ``text``, ``label`` (``ClassLabel`` negative/neutral/positive) and ``source``
        (``alpha``/``beta``/``gamma``/``delta``, each with a different label mix).
    """
    rng = np.random.default_rng(seed)
    groups = list(SOURCE_MIX)
    texts: list[str] = []
    labels: list[int] = []
    sources: list[str] = []
    for i in range(rows):
        group = groups[i % len(groups)]
        label = int(rng.choice(len(CLASS_LABELS), p=SOURCE_MIX[group]))
        vocab = CLASS_WORDS[CLASS_LABELS[label]]
        words = [vocab[j] for j in rng.integers(0, len(vocab), size=int(rng.integers(2, 4)))]
        words += [NOISE_WORDS[j] for j in rng.integers(0, len(NOISE_WORDS), size=int(rng.integers(3, 6)))]
        texts.append(" ".join(words[j] for j in rng.permutation(len(words))))
        labels.append(label)
        sources.append(group)
    features = datasets.Features(
        {
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=list(CLASS_LABELS)),
            "source": datasets.Value("string"),
        }
    )
    return datasets.Dataset.from_dict({"text": texts, "label": labels, "source": sources}, features=features)


def synthetic_causal(seed: int) -> datasets.Dataset:
    """400 simple question/answer pairs in four subjects (100 each), shuffled by ``seed``.

    Subjects: ``colors`` ("What is the color of the big apple?" -> "The color of the big apple is
    red."), ``animals``, ``geography`` and ``arithmetic``; answers are fully determined by the
    question, so a tiny model can learn them.

    Returns
    -------
    datasets.Dataset
        Columns ``prompt``, ``response``, ``subject``.
    """
    rows: list[tuple[str, str, str]] = []
    for thing, color in COLORS.items():
        for size in SIZES:
            question = f"What is the color of the {size} {thing}?"
            rows.append((question, f"The color of the {size} {thing} is {color}.", "colors"))
    for animal, sound in SOUNDS.items():
        for size in SIZES:
            question = f"What sound does the {size} {animal} make?"
            rows.append((question, f"The {size} {animal} says {sound}.", "animals"))
    for country, capital in CAPITALS.items():
        for template in CAPITAL_TEMPLATES:
            rows.append((template.format(c=country), f"The capital of {country} is {capital}.", "geography"))
    for a in range(1, 11):
        for b in range(1, 11):
            rows.append((f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.", "arithmetic"))
    order = np.random.default_rng(seed).permutation(len(rows))
    return datasets.Dataset.from_dict(
        {
            "prompt": [rows[i][0] for i in order],
            "response": [rows[i][1] for i in order],
            "subject": [rows[i][2] for i in order],
        }
    )
