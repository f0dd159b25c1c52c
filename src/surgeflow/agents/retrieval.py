"""Okapi BM25 search and a Naive Bayes intent classifier over one dependency-free tokenizer."""

from __future__ import annotations

import heapq
import itertools
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence

from surgeflow.text import stem

# Question words, negations and "still"/"yet" are kept on purpose: "where is my order" and
# "still no refund" are told apart by exactly those words. Verbs of wanting ("like", "need")
# are dropped: every intent has them. (One string, because it reads as a word list.)
STOPWORDS = frozenset(
    """a an the and or but if then of to in on at by for with from as into than so
    is are was were be been being am do does did done have has had having
    i me my mine myself we us our ours you your yours he him his she her it its they them their
    this that these those there here
    can could would should will shall may might must
    please hi hello hey thanks thank just also very too really some any all each
    get got im ive id dont like want need know tell""".split()  # noqa: SIM905
)

_WORD = re.compile(r"[a-z0-9]+")
_APOSTROPHES = re.compile(r"['’]")


class Tokenizer:
    """Text to stemmed, stopword-free tokens, with optional domain synonyms and phrases.

    ``phrases`` maps regular expressions (matched on lowercased text) to replacement words, for
    idioms a bag of words cannot see ("money back" means refund); ``synonyms`` maps a canonical
    word to words that mean the same in the domain. Both sides are stemmed, so listing one
    inflection is enough.
    """

    __slots__ = ("_phrases", "_synonyms")

    def __init__(
        self,
        *,
        synonyms: Mapping[str, Iterable[str]] | None = None,
        phrases: Mapping[str, str] | None = None,
    ) -> None:
        self._phrases = [
            (re.compile(rf"\b(?:{p})\b"), f" {r} ") for p, r in (phrases or {}).items()
        ]
        self._synonyms = {
            stem(word): stem(canonical)
            for canonical, words in (synonyms or {}).items()
            for word in words
        }

    def __call__(self, text: str) -> list[str]:
        text = _APOSTROPHES.sub("", text.lower())
        for pattern, replacement in self._phrases:
            text = pattern.sub(replacement, text)
        stems = (stem(word) for word in _WORD.findall(text) if word not in STOPWORDS)
        return [self._synonyms.get(token, token) for token in stems]

    def __repr__(self) -> str:
        return f"<Tokenizer synonyms={len(self._synonyms)} phrases={len(self._phrases)}>"


tokenize = Tokenizer()


class BM25Index:
    """Okapi BM25 over short documents, with the per-posting weights computed at build time.

    A search touches only the postings of the query's terms, so its cost grows with the number
    of matching documents, not with the size of the collection.
    """

    __slots__ = ("_postings", "_tokenizer", "avg_length", "size")

    def __init__(
        self,
        docs: Sequence[str],
        *,
        k1: float = 1.5,
        b: float = 0.75,
        tokenizer: Callable[[str], list[str]] = tokenize,
    ) -> None:
        self._tokenizer = tokenizer
        counts = [Counter(tokenizer(doc)) for doc in docs]
        lengths = [sum(c.values()) for c in counts]
        self.size = len(docs)
        self.avg_length = sum(lengths) / self.size if self.size else 0.0
        frequencies: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for doc_id, terms in enumerate(counts):
            for term, tf in terms.items():
                frequencies[term].append((doc_id, tf))
        self._postings: dict[str, tuple[tuple[int, float], ...]] = {}
        for term, docs_tf in frequencies.items():
            df = len(docs_tf)
            # The "+1" inside the log (Lucene's variant) keeps terms found in over half the
            # documents from scoring negative, so a match never ranks below no match.
            idf = math.log(1 + (self.size - df + 0.5) / (df + 0.5))
            weights = []
            for doc_id, tf in docs_tf:
                norm = k1 * (1 - b + b * lengths[doc_id] / self.avg_length)
                weights.append((doc_id, idf * tf * (k1 + 1) / (tf + norm)))
            self._postings[term] = tuple(weights)

    def search(self, query: str, k: int = 10) -> list[tuple[int, float]]:
        """The ``k`` best ``(doc_index, score)`` pairs, best first; only documents that match."""
        if k <= 0:
            return []
        scores: dict[int, float] = defaultdict(float)
        for term in set(self._tokenizer(query)):
            for doc_id, weight in self._postings.get(term, ()):
                scores[doc_id] += weight
        # Ties go to the earlier document so results are reproducible run to run.
        return heapq.nlargest(k, scores.items(), key=lambda hit: (hit[1], -hit[0]))

    def __repr__(self) -> str:
        return f"<BM25Index docs={self.size} terms={len(self._postings)}>"


def word_pairs(words: list[str]) -> list[str]:
    """Classifier features: the tokens and adjacent token pairs ("not arriv", "cancel order")."""
    return words + [f"{a} {b}" for a, b in itertools.pairwise(words)]


class IntentClassifier:
    """Multinomial Naive Bayes with Laplace smoothing over words and word pairs.

    ``predict`` returns the top label and its posterior probability. Log-posteriors are divided
    by ``temperature`` before normalising: above 1 softens an overconfident model (correlated
    features), below 1 sharpens one that smoothing has made too timid. Fit it by log-loss on
    held-out data. A text with no known feature gets the class prior, i.e. low confidence.
    """

    __slots__ = ("_log_likelihood", "_log_prior", "_tokenizer", "_unseen", "labels", "temperature")

    def __init__(
        self,
        examples: Iterable[tuple[str, str]],
        *,
        alpha: float = 1.0,
        temperature: float = 1.0,
        tokenizer: Callable[[str], list[str]] = tokenize,
    ) -> None:
        if alpha <= 0 or temperature <= 0:
            raise ValueError("alpha and temperature must be > 0")
        self.temperature = temperature
        self._tokenizer = tokenizer
        counts: dict[str, Counter[str]] = defaultdict(Counter)
        documents: Counter[str] = Counter()
        for text, label in examples:
            counts[label].update(self._features(text))
            documents[label] += 1
        if not documents:
            raise ValueError("IntentClassifier needs at least one labelled example")
        self.labels: tuple[str, ...] = tuple(sorted(documents))
        vocabulary = set().union(*counts.values())
        total = sum(documents.values())
        self._log_prior = {label: math.log(documents[label] / total) for label in self.labels}
        self._log_likelihood: dict[str, dict[str, float]] = defaultdict(dict)
        self._unseen: dict[str, float] = {}
        for label in self.labels:
            denominator = math.log(sum(counts[label].values()) + alpha * len(vocabulary))
            self._unseen[label] = math.log(alpha) - denominator
            for feature, n in counts[label].items():
                self._log_likelihood[feature][label] = math.log(n + alpha) - denominator

    def posterior(self, text: str) -> dict[str, float]:
        """The probability of every label, summing to 1."""
        logits = dict(self._log_prior)
        for feature in self._features(text):
            seen = self._log_likelihood.get(feature)
            if seen is None:  # unknown to every class: carries no evidence either way
                continue
            for label in self.labels:
                logits[label] += seen.get(label, self._unseen[label])
        top = max(logits.values())
        weights = {label: math.exp((x - top) / self.temperature) for label, x in logits.items()}
        total = sum(weights.values())
        return {label: w / total for label, w in weights.items()}

    def _features(self, text: str) -> list[str]:
        return word_pairs(self._tokenizer(text))

    def predict(self, text: str) -> tuple[str, float]:
        """The most probable label and its probability."""
        return most_probable(self.posterior(text))

    def __repr__(self) -> str:
        return f"<IntentClassifier labels={len(self.labels)} features={len(self._log_likelihood)}>"


def most_probable(posterior: Mapping[str, float]) -> tuple[str, float]:
    """The label with the highest probability (ties: the alphabetically first) and that value."""
    label = min(posterior, key=lambda name: (-posterior[name], name))
    return label, posterior[label]
