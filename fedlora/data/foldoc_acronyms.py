"""Acronym expansions from FOLDOC: ``What does "NIC" stand for?`` -> ``Network Information Center``.

Why a second FOLDOC task: a definition of a held-out term is a fact the model has never seen, so
generation metrics on :mod:`fedlora.data.foldoc` barely move however long one trains (the loss falls,
the answers learn FOLDOC's style, the facts stay unknown). An acronym's expansion is constrained by
its letters and often known to a pretrained model; what fine-tuning adds is answering with the
expansion alone instead of a paragraph. Held-out exact match and ROUGE-L therefore rise with
training, which makes this the corpus to demonstrate that generation learning is measured.

An entry counts as an acronym when its headword is 2-10 letters/digits with at least two capitals and
the first clause of its definition (after any leading pronunciation ``/.../`` or usage tag
``[...]``; up to ``.``, ``(``, ``;`` or ``:``) is at most
:data:`MAX_WORDS` words whose initials spell the headword: the initials of all words, or of the
capitalized ones (``Standard ANSI Module language with Extensions`` -> ``SAME``). The same
``subject`` column as :mod:`fedlora.data.foldoc` is kept (most acronyms are untagged, so the data
group's default partitioner is ``iid``).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

import datasets

from fedlora.config.schema import DataConfig
from fedlora.data.foldoc import find_foldoc_files, foldoc_entries

logger = logging.getLogger(__name__)

MAX_WORDS = 10
PROMPT = 'What does "{term}" stand for?'

_ACRONYM = re.compile(r"[A-Za-z0-9&]{2,10}")
_CLAUSE_END = re.compile(r"[.(;:]")
_WORD_SPLIT = re.compile(r"[\s\-/]+")
# Jargon-file entries open with a pronunciation and/or a usage tag: /yawn/, [Usenet], /ya'b*/ [Cambridge]
_LEADING_NOTES = re.compile(r"^(?:\s*(?:/[^/]*/|\[[^\]]*\])\s*,?)+")


def expansion_of(term: str, definition: str) -> str | None:
    """The expansion of ``term`` if ``definition`` starts with one (see the module docstring), else None."""
    if not _ACRONYM.fullmatch(term) or sum(char.isupper() for char in term) < 2:
        return None
    clause = _CLAUSE_END.split(_LEADING_NOTES.sub("", definition), maxsplit=1)[0].strip()
    words = [word for word in _WORD_SPLIT.split(clause) if word and word[0].isalnum()]
    if not 2 <= len(words) <= MAX_WORDS:
        return None
    every = "".join(word[0] for word in words).upper()
    capitals = "".join(word[0] for word in words if word[0].isupper() or word[0].isdigit())
    return clause if term.upper() in (every, capitals.upper()) else None


def acronym_pairs(index_path: Path, dict_path: Path) -> dict[str, list[str]]:
    """Build prompt/response/subject columns of every acronym entry, each entry and term once."""
    columns: dict[str, list[str]] = {"prompt": [], "response": [], "subject": []}
    seen_terms: set[str] = set()
    for term, subject, definition in foldoc_entries(index_path, dict_path):
        expansion = expansion_of(term, definition)
        if expansion is None or term in seen_terms:
            continue
        seen_terms.add(term)
        columns["prompt"].append(PROMPT.format(term=term))
        columns["response"].append(expansion)
        columns["subject"].append(subject)
    return columns


def load_foldoc_acronyms(cfg: DataConfig) -> datasets.Dataset:
    """Load FOLDOC's acronym expansions as a causal-LM dataset (``prompt``, ``response``, ``subject``).

    Raises
    ------
    FileNotFoundError
        FOLDOC is not installed (the message says how to get it).
    ValueError
        The dictionary holds no acronym entry.
    """
    index_path, dict_path = find_foldoc_files(cfg.path)
    columns = acronym_pairs(index_path, dict_path)
    if not columns["prompt"]:
        raise ValueError(f"data.source='foldoc_acronyms': no acronym entries found in {dict_path}")
    counts = Counter(columns["subject"])
    logger.info(
        "foldoc_acronyms: %d acronym expansions from %s (%d distinct subjects)",
        len(columns["prompt"]),
        dict_path,
        len(counts),
    )
    return datasets.Dataset.from_dict(columns)
