"""Guards: the checks a semantic candidate must pass before its answer is served.

Two prompts can embed almost alike and still ask different things: "convert 100 USD to EUR"
and "convert 150 USD to EUR", "EUR to USD", "is it safe" and "is it not safe", "capital of
Austria" and "capital of Australia", "cheapest" and "most expensive". Cosine similarity cannot
tell these apart; it rewards exactly the overlap that makes them look alike. So each prompt is
reduced to `Features` (its numbers, negations, scope words, directed objects and content words,
after rewriting the many spellings of one thing to one form) and a candidate is served only when
every guard agrees:

- ``numbers``: the same numbers, however written ("5", "five", "5.0").
- ``negation``: as many negations on each side ("without" counts, "with" does not).
- ``scope``: the same quantifiers and extent markers (all, my last, top, per, monthly …).
- ``direction``: what goes *to* and *from* stays put; the same words in another order around a
  directed verb ("who beat Germany" / "who did Germany beat") is refused.
- ``content``: every content word on one side is on the other, or is paired with a word that means
  the same: the same stem, a listed synonym or alias, a typo of it, or (when a word similarity
  is given) a word whose embedding is very close, unless the two are listed or prefixed opposites.

The guards are deliberately strict: a refused paraphrase costs one upstream call, a served
look-alike gives a user the wrong answer.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache

import snowballstemmer

from surgeflow.cache.semantic import lexicon

GUARDS = ("numbers", "negation", "direction", "opposite", "scope", "content", "entity")

_stemmer = snowballstemmer.stemmer("english")


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    return str(_stemmer.stemWord(word))


def _phrase_table() -> list[tuple[re.Pattern[str], str]]:
    pairs: list[tuple[str, str]] = []
    for canonical, spellings in lexicon.REWRITES.items():
        pairs.extend((spelling, canonical) for spelling in spellings)
    for canonical, spellings in lexicon.ALIASES.items():
        pairs.extend((spelling, canonical) for spelling in spellings)
    pairs.sort(key=lambda pair: -len(pair[0]))  # longest first: "us dollars" before "dollars"
    table = []
    for spelling, canonical in pairs:
        pattern = re.compile(rf"(?<![\w.]){re.escape(spelling)}(?![\w])")
        table.append((pattern, canonical))
    return table


_PHRASES = _phrase_table()
_CONTRACTIONS = (
    (re.compile(r"\bcan't\b"), "can not"),
    (re.compile(r"\bwon't\b"), "will not"),
    (re.compile(r"\bshan't\b"), "shall not"),
    (re.compile(r"n't\b"), " not"),
    (re.compile(r"\b(what|who|where|when|how|why|it|that|there|here|he|she)'s\b"), r"\1 is"),
    (re.compile(r"'re\b"), " are"),
    (re.compile(r"'ve\b"), " have"),
    (re.compile(r"'ll\b"), " will"),
    (re.compile(r"'d\b"), " would"),
    (re.compile(r"\bi'm\b"), "i am"),
    (re.compile(r"'s\b"), ""),  # possessive: "John's order" asks about John's order
)
_CURRENCY_SIGNS = (("$", "usd"), ("€", "eur"), ("£", "gbp"), ("¥", "jpy"), ("₹", "inr"))
_SIGN_AMOUNT = re.compile(r"([$€£¥₹])\s*(\d[\d,]*(?:\.\d+)?)")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_SUFFIXED = re.compile(r"\b(\d+(?:\.\d+)?)(k|m|bn)\b")
_UNIT_GLUED = re.compile(
    r"\b(\d+(?:\.\d+)?)(am|pm|mb|gb|kb|tb|ms|h|km|kg|cm|mm|ml|oz|lbs?|ft|mi|mph|kph|f|c)\b"
)
_ORDINAL = re.compile(r"\b(\d+)(?:st|nd|rd|th)\b")
_TOKEN = re.compile(r"[a-z0-9]+(?:[.+#][a-z0-9+#]+)*[+#]*")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_ORDINAL_TOKEN = "#"  # an ordinal is kept as its number with this mark: "3rd" → "#3"
_ORDINAL_WORD = "ordinalnumber"  # "3rd" while the text is being tokenized


@dataclass(frozen=True, slots=True)
class Features:
    """What the guards compare of one prompt."""

    text: str
    tokens: tuple[str, ...]
    content: tuple[str, ...]  # stems of the content words, in order
    surface: tuple[str, ...]  # the same words before stemming
    sequence: tuple[str, ...]  # content stems and numbers, in order
    numbers: tuple[str, ...]  # sorted
    negations: int
    directed: frozenset[tuple[str, str]]  # (preposition, the stem of its object)
    entities: frozenset[str]  # stems of names as written: "Austria", "USD", "iPhone", "S3"
    qualifiers: frozenset[str]  # stems of words a preposition or "and" attaches: "for electronics"


def features(text: str) -> Features:
    """Reduce a prompt to what the guards compare."""
    tokens = _tokens(text)
    numbers: list[str] = []
    negations = 0
    content: list[str] = []
    surface: list[str] = []
    sequence: list[str] = []
    directed: set[tuple[str, str]] = set()
    pending: str | None = None  # a preposition waiting for its object
    qualifiers: set[str] = set()
    qualifying = False  # the last word was a qualifying preposition
    for token in tokens:
        # A preposition's restriction reaches past "the", "my", "all": "for all my orders".
        carried = qualifying and (
            token in _DETERMINERS or token in lexicon.FILLER or token in lexicon.SCOPE
        )
        after_preposition = qualifying and not carried
        qualifying = carried or token in _QUALIFYING
        if _NUMBER.fullmatch(token) or token.startswith(_ORDINAL_TOKEN):
            numbers.append(token)
            sequence.append(token)
            if pending is not None:
                directed.add((pending, token))
                pending = None
            continue
        if token in lexicon.NEGATION:
            negations += 1
            continue
        preposition = lexicon.DIRECTION_PREPOSITIONS.get(token)
        if preposition is not None:
            pending = preposition
            continue
        if token in lexicon.FUNCTION_WORDS or token in lexicon.FILLER:
            continue
        stemmed = stem(token)
        content.append(stemmed)
        surface.append(token)
        sequence.append(stemmed)
        if after_preposition:
            qualifiers.add(stemmed)
        if pending is not None:
            directed.add((pending, stemmed))
            pending = None
    return Features(
        text=text,
        tokens=tuple(tokens),
        content=tuple(content),
        surface=tuple(surface),
        sequence=tuple(sequence),
        numbers=tuple(sorted(numbers)),
        negations=negations,
        directed=frozenset(directed),
        entities=_entities(text),
        qualifiers=frozenset(qualifiers),
    )


_QUALIFYING = lexicon.QUALIFYING
_DETERMINERS = lexicon.DETERMINERS


_NAME = re.compile(
    r"(?<![\w'])([A-Z][\w]*[A-Z0-9][\w]*|[A-Za-z]+\d[\w]*|[A-Z][a-z]+(?:\s+[A-Z][a-z]+(?!\w))*)"
)
_SENTENCE_START = re.compile(r"(?:^|[.!?:;]\s+|[\"'(]\s*)$")


def _entities(text: str) -> frozenset[str]:
    """Names as the user wrote them: a capitalised word that does not start a sentence, an
    acronym, a word with digits. Stems of their normalised tokens, so "USD" and "dollars" agree."""
    names = set()
    for match in _NAME.finditer(text):
        word = match.group(1)
        if (
            word[0].isupper()
            and word[1:].islower()
            and _SENTENCE_START.search(text[: match.start()])
        ):
            continue  # "What", "How": capitalised because they come first
        for token in _tokens(word):
            if not (token in lexicon.FUNCTION_WORDS or token in lexicon.FILLER):
                names.add(stem(token))
    return frozenset(names)


_COUNTRY_CODES = re.compile(r"\b(US|UK)\b(?! dollars?\b)")


def _tokens(text: str) -> list[str]:
    text = _COUNTRY_CODES.sub(lambda m: "usa" if m.group(1) == "US" else "uk", text)
    text = unicodedata.normalize("NFKC", text).lower().replace("’", "'").replace("‘", "'")
    for pattern, replacement in _CONTRACTIONS:
        text = pattern.sub(replacement, text)
    text = _SIGN_AMOUNT.sub(lambda m: f"{m.group(2)} {dict(_CURRENCY_SIGNS)[m.group(1)]}", text)
    for sign, code in _CURRENCY_SIGNS:
        text = text.replace(sign, f" {code} ")
    text = _THOUSANDS.sub("", text)
    text = _SUFFIXED.sub(_expand_suffix, text)
    text = _UNIT_GLUED.sub(r"\1 \2", text)
    text = _ORDINAL.sub(lambda m: f" {_ORDINAL_WORD}{m.group(1)} ", text)
    text = text.replace("%", " percent ")
    for pattern, canonical in _PHRASES:
        text = pattern.sub(canonical, text)
    return _numbers_in(
        [
            _ORDINAL_TOKEN + token.removeprefix(_ORDINAL_WORD)
            if token.startswith(_ORDINAL_WORD)
            else token
            for token in _TOKEN.findall(text)
        ]
    )


def _expand_suffix(match: re.Match[str]) -> str:
    scale = {"k": 1_000, "m": 1_000_000, "bn": 1_000_000_000}[match.group(2)]
    return _format(float(match.group(1)) * scale)


def _format(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"


def _numbers_in(tokens: list[str]) -> list[str]:
    """Spelled numbers to digits ("twenty five" → "25", "3 thousand" → "3000", "third" → "#3");
    digits to one spelling ("5.0" → "5")."""
    out: list[str] = []
    value: float | None = None
    words = 0  # spelled number words in ``value``
    for token in tokens:
        if token in lexicon.NUMBER_WORDS:
            value = (value or 0) + lexicon.NUMBER_WORDS[token]
            words += 1
            continue
        if token in lexicon.NUMBER_SCALES and value is not None:
            value *= lexicon.NUMBER_SCALES[token]
            continue
        if _NUMBER.fullmatch(token):
            if value is not None:
                out.append(_spelled(value, words))
            value, words = float(token), 0
            continue
        if token == "and" and value is not None:
            continue  # "one hundred and five"
        if value is not None:
            out.append(_spelled(value, words))
            value, words = None, 0
        if token in lexicon.ORDINAL_WORDS:
            out.append(f"{_ORDINAL_TOKEN}{lexicon.ORDINAL_WORDS[token]}")
        else:
            out.append(token)
    if value is not None:
        out.append(_spelled(value, words))
    return out


def _spelled(value: float, words: int) -> str:
    # "one" alone is mostly "a": "in one sentence", "which one", "one inch" ask no number.
    return "one" if value == 1 and words == 1 else _format(value)


WordSimilarity = Callable[[str, str], float]


class Guards:
    """Decide whether a cached prompt's answer may answer a new prompt.

    ``word_similarity`` (optional) scores two words in [-1, 1]; with it, two different content
    words pair up when they score at least ``synonym_similarity`` and are not opposites.
    ``vocabulary`` (optional) is the set of known whole words: a word outside it that is one or
    two edits from a word on the other side is taken as that word misspelt.
    """

    def __init__(
        self,
        *,
        word_similarity: WordSimilarity | None = None,
        vocabulary: Iterable[str] = (),
        synonym_similarity: float = 0.9,
        max_edit: int = 2,
    ) -> None:
        self.word_similarity = word_similarity
        self.vocabulary = frozenset(vocabulary)
        self.synonym_similarity = synonym_similarity
        self.max_edit = max_edit
        self._synonyms = _index_pairs(lexicon.SYNONYMS)
        self._antonyms = _index_pairs(lexicon.ANTONYMS)

    def check(self, cached: Features, query: Features) -> str | None:
        """None when ``cached``'s answer answers ``query``; otherwise the refusing guard's name."""
        if cached.numbers != query.numbers:
            return "numbers"
        if cached.negations != query.negations:
            return "negation"
        if not _same_direction(cached, query):
            return "direction"
        unmatched_a, unmatched_b = self.unmatched(cached, query)
        if any(self.opposites(a, b) for a in unmatched_a for b in unmatched_b):
            return "opposite"  # "speed up" / "slow down", "warm-up" / "cool-down"
        if unmatched_a and unmatched_b and len(unmatched_a) + len(unmatched_b) <= self.max_edit:
            # A word or two of the same question swapped for others: they are its point.
            return _which(unmatched_a + unmatched_b)
        # Other words only one side has are framing ("explain", "right now") or a rewrite,
        # unless they narrow or widen the question ("all", "senior"), turn it round ("zoom
        # out"), restrict it ("policy for electronics"), or name something.
        salient = [
            word
            for word, side in [(w, cached) for w in unmatched_a] + [(w, query) for w in unmatched_b]
            if word in lexicon.SCOPE
            or word in lexicon.PARTICLES
            or self.has_opposite(word)
            or stem(word) in side.entities
            or stem(word) in side.qualifiers
        ]
        if salient:
            return _which(salient)
        if not self._same_entities(cached, query):
            return "entity"
        return None

    def opposites(self, word_a: str, word_b: str) -> bool:
        """``word_a`` and ``word_b`` are listed or prefixed opposites."""
        return self._opposites(word_a, stem(word_a), word_b, stem(word_b))

    def has_opposite(self, word: str) -> bool:
        """``word`` has a listed opposite and is not a verb that merely frames a request."""
        return stem(word) in self._antonyms and word not in lexicon.FRAMING_VERBS

    def unmatched(self, a: Features, b: Features) -> tuple[list[str], list[str]]:
        """The content words of each side that nothing on the other side stands for."""
        only_a = sorted(set(a.surface) - set(b.surface))
        only_b = sorted(set(b.surface) - set(a.surface))
        only_a, only_b = _unjoin(only_a, only_b), _unjoin(only_b, only_a)
        unmatched_b = list(only_b)
        unmatched_a = []
        for word in only_a:
            for other in unmatched_b:
                if self._same_meaning(word, stem(word), other, stem(other)):
                    unmatched_b.remove(other)
                    break
            else:
                unmatched_a.append(word)
        return unmatched_a, unmatched_b

    def _same_entities(self, a: Features, b: Features) -> bool:
        """Every name on one side is somewhere on the other (in any case, or as a synonym)."""
        words_a, words_b = set(a.sequence), set(b.sequence)
        for names, words in ((a.entities, words_b), (b.entities, words_a)):
            for name in names:
                if name not in words and not any(
                    self._synonyms.get(name, set()) & self._synonyms.get(w, set()) for w in words
                ):
                    return False
        return True

    def _same_meaning(self, word_a: str, stem_a: str, word_b: str, stem_b: str) -> bool:
        if self._opposites(word_a, stem_a, word_b, stem_b):
            return False
        if stem_a == stem_b or _derived(stem_a, stem_b) or _derived(stem_b, stem_a):
            return True
        if self._synonyms.get(stem_a, set()) & self._synonyms.get(stem_b, set()):
            return True
        if _misspelt(word_a, word_b, self.vocabulary):
            return True
        if self.word_similarity is None:
            return False
        return self.word_similarity(word_a, word_b) >= self.synonym_similarity

    def _opposites(self, word_a: str, stem_a: str, word_b: str, stem_b: str) -> bool:
        if self._antonyms.get(stem_a, set()) & self._antonyms.get(stem_b, set()):
            return True
        for prefix in lexicon.NEGATING_PREFIXES:
            if word_a == prefix + word_b or word_b == prefix + word_a:
                return True
            if stem_a == prefix + stem_b or stem_b == prefix + stem_a:
                return True
        return False


_DERIVATIONS = ("an", "ean", "ian", "ese", "ish", "ic", "al", "ly", "ity", "ness", "ment")


def _derived(short: str, long: str) -> bool:
    """``long`` is ``short`` with a derivational suffix: "europ"/"european", "dent"/"dental"."""
    return len(short) >= 4 and long.startswith(short) and long[len(short) :] in _DERIVATIONS


def _unjoin(words: list[str], other: list[str]) -> list[str]:
    """``words`` without those that ``other`` writes as one ("working out" / "workout"), and
    without those it writes as two."""
    joined = {stem(w) for w in other}
    kept = [w for w in words if not any(stem(w) + stem(o) in joined for o in other)]
    kept = [w for w in kept if not any(stem(o) + stem(w) in joined for o in other)]
    halves = {stem(x) + stem(y) for x in other for y in other if x != y}
    return [w for w in kept if stem(w) not in halves]


def _which(words: list[str]) -> str:
    return "scope" if any(word in lexicon.SCOPE for word in words) else "content"


def _index_pairs(groups: Iterable[tuple[str, ...]]) -> dict[str, set[int]]:
    """stem → the groups it belongs to; two stems are related when they share a group. Antonym
    pairs are indexed so that a word and its opposite share a group but two words on the same
    side of different pairs do not."""
    index: dict[str, set[int]] = {}
    for number, group in enumerate(groups):
        for word in group:
            if " " in word:
                continue  # phrases are rewritten before comparison, see lexicon.REWRITES
            index.setdefault(stem(word), set()).add(number)
    return index


def _same_direction(a: Features, b: Features) -> bool:
    if _symmetric(a) or _symmetric(b):
        return True  # "the difference between X and Y" / "how does Y differ from X"
    role_a, role_b = _first_person(a.tokens), _first_person(b.tokens)
    if role_a is not None and role_b is not None and role_a != role_b:
        return False  # "I lent my brother …" / "my brother lent me …"
    objects_a: dict[str, set[str]] = {}
    for preposition, obj in a.directed:
        objects_a.setdefault(obj, set()).add(preposition)
    objects_b: dict[str, set[str]] = {}
    for preposition, obj in b.directed:
        objects_b.setdefault(obj, set()).add(preposition)
    for obj, prepositions in objects_a.items():
        other = objects_b.get(obj)
        if other is not None and not prepositions & other:
            return False  # "to EUR" on one side, "from EUR" on the other
    words_a, words_b = set(a.sequence), set(b.sequence)
    for preposition, obj in a.directed - b.directed:
        for other_preposition, other_obj in b.directed - a.directed:
            if (
                preposition == other_preposition
                and obj != other_obj
                and obj in words_b
                and other_obj in words_a
            ):
                return False  # "JSON to a dict" / "a dict to JSON": the objects traded places
    return not _swapped(a, b)


def _swapped(a: Features, b: Features) -> bool:
    """The words both sides share come in the same order but for two runs of them that traded
    places, joined by the same words on both sides: "divide 12 by 4" / "divide 4 by 12", "feet
    in a meter" / "meters in a foot", "a UK plug in the US" / "a US plug in the UK"; or one of
    them is a directed verb ("who beat Germany" / "who did Germany beat"). Runs that move
    around other words ("a Python list" / "a list in Python") or are joined by "and"/"or" ask
    the same."""
    # Where the question word goes says nothing of direction: "a hexagon has how many sides".
    sequence_a = tuple(w for w in a.sequence if w not in _WH)
    sequence_b = tuple(w for w in b.sequence if w not in _WH)
    shared = Counter(sequence_a) & Counter(sequence_b)
    kept_a = _kept(sequence_a, shared)
    kept_b = _kept(sequence_b, shared)
    differ = [i for i, (x, y) in enumerate(zip(kept_a, kept_b, strict=True)) if x != y]
    if not differ:
        return False
    start, end = differ[0], differ[-1] + 1
    swap = _block_swap(kept_a[start:end], kept_b[start:end])
    if swap is None:
        return False
    first, middle, second = swap
    if any(word in _DIRECTION_VERBS for word in first + middle + second):
        return True
    subject_a, subject_b = _subject_question(a.tokens), _subject_question(b.tokens)
    if subject_a is not None and subject_b is not None and subject_a != subject_b:
        return True  # "who taught Aristotle" / "who did Aristotle teach": subject and object
    joint_a = _between(a.tokens, first[-1], second[0])
    joint_b = _between(b.tokens, second[-1], first[0])
    # "gas stove or electric stove" / "electric stove or gas stove" asks the same.
    if not joint_a and not joint_b:
        return True  # "is all champagne sparkling wine" / "is all sparkling wine champagne"
    return joint_a == joint_b and not set(joint_a) <= _SYMMETRIC


_SYMMETRIC = frozenset({"and", "or", "vs", "versus", "nor", "plus", "with", "between"})
_DIRECTION_VERBS = frozenset(stem(word) for word in lexicon.DIRECTION_VERBS)


def _block_swap(a: list[str], b: list[str]) -> tuple[list[str], list[str], list[str]] | None:
    """(X, M, Y) when ``a`` is X + M + Y and ``b`` is Y + M + X, X and Y not empty."""
    n = len(a)
    for x in range(1, n):
        for y in range(1, n - x + 1):
            first, middle, second = a[:x], a[x : n - y], a[n - y :]
            if b == second + middle + first:
                return first, middle, second
    return None


def _between(tokens: tuple[str, ...], left: str, right: str) -> list[str]:
    """The tokens between the first token that stems to ``left`` and the next that stems to
    ``right``."""
    stems = [stem(t) for t in tokens]
    try:
        i = stems.index(left)
        j = stems.index(right, i + 1)
    except ValueError:
        return []
    return [t for t in tokens[i + 1 : j] if t not in _ARTICLES and t not in lexicon.FILLER]


_ARTICLES = frozenset({"a", "an", "the"})


_WH = frozenset(stem(w) for w in ("how", "why", "when", "where", "who"))


def _first_person(tokens: tuple[str, ...]) -> str | None:
    """The speaker's role where the speaker first appears: "subject" ("I", "we"), "object"
    ("me", "us", "myself"), or None when the speaker does not appear (or only as "my")."""
    for token in tokens:
        if token in {"i", "we"}:
            return "subject"
        if token in {"me", "us", "myself", "ourselves"}:
            return "object"
    return None


def _symmetric(features: Features) -> bool:
    return any(token in lexicon.SYMMETRIC_CUES for token in features.tokens)


def _subject_question(tokens: tuple[str, ...]) -> bool | None:
    """For "who/what …" questions: True when the question word is the subject ("who taught
    X"), False when it is the object ("who did X teach"), None for other sentences."""
    if len(tokens) < 2 or tokens[0] not in {"who", "what", "which"}:
        return None
    if tokens[1] in {"do", "does", "did"}:
        return False
    if tokens[1] in lexicon.FUNCTION_WORDS:
        return None  # "what is …", "who was …": neither
    return True


def _kept(words: tuple[str, ...], shared: Counter[str]) -> list[str]:
    budget = Counter(shared)
    kept = []
    for word in words:
        if budget[word] > 0:
            budget[word] -= 1
            kept.append(word)
    return kept


def _misspelt(word_a: str, word_b: str, vocabulary: frozenset[str]) -> bool:
    """One of the two is a known word, the other is not and is within one edit (two for long
    words) of it: "pasword" / "password"."""
    if (word_a in vocabulary) == (word_b in vocabulary):
        return False  # both known ("price" / "prize"), or both unknown ("ethanol" / "methanol")
    shortest = min(len(word_a), len(word_b))
    if shortest < 4 or word_a[0] != word_b[0]:
        return False  # a typo rarely changes the first letter: "ethanol" / "methanol"
    budget = 2 if shortest >= 8 else 1
    return _edit_distance(word_a, word_b, budget) <= budget


def _edit_distance(a: str, b: str, budget: int) -> int:
    """Damerau-Levenshtein (optimal string alignment), stopping once over ``budget``."""
    if abs(len(a) - len(b)) > budget:
        return budget + 1
    previous_previous: list[int] = []
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i] + [0] * len(b)
        for j, char_b in enumerate(b, 1):
            cost = char_a != char_b
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and char_a == b[j - 2] and a[i - 2] == char_b:
                current[j] = min(current[j], previous_previous[j - 2] + 1)
        if min(current) > budget:
            return budget + 1
        previous_previous, previous = previous, current
    return previous[-1]
