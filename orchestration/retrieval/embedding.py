"""A local embedding function: TF-IDF then truncated SVD (latent semantic analysis).

Trained on the corpus it will embed, in a fraction of a second for a few hundred
documents; nothing is downloaded. :meth:`LsaEmbedder.save` writes JSON (settings and
vocabulary) and a NumPy ``.npz`` (IDF weights and SVD components, loaded with
``allow_pickle=False``): no pickle, so a cache file cannot run code when read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from orchestration.errors import RetrievalError

if TYPE_CHECKING:
    from sklearn.feature_extraction.text import TfidfVectorizer

SETTINGS_FILE: Final = "embedder.json"
ARRAYS_FILE: Final = "embedder.npz"
FORMAT: Final = 1


def _vectorizer(vocabulary: dict[str, int] | None = None) -> TfidfVectorizer:
    # Imported when first fitted or loaded: importing this module (the engine's semantic
    # routers do) costs no scikit-learn import until an embedder is needed.
    from sklearn.feature_extraction.text import TfidfVectorizer

    # Word unigrams and bigrams, English stopwords out, sublinear term frequency: the
    # usual LSA recipe for short documents.
    return TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, stop_words="english",
                           token_pattern=r"(?u)\b[\w-]{2,}\b", vocabulary=vocabulary)


class LsaEmbedder:
    """Texts to unit vectors of ``dimensions`` floats; fit once, then :meth:`embed`.

    Use :meth:`fit` (or :meth:`load` a saved one). Cosine similarity of two embeddings
    is their dot product.
    """

    def __init__(self, vectorizer: TfidfVectorizer, components: np.ndarray[Any, Any]) -> None:
        self._vectorizer = vectorizer
        self._components = components.astype(np.float32)

    @property
    def dimensions(self) -> int:
        """How many floats an embedding has."""
        return int(self._components.shape[0])

    @classmethod
    def fit(cls, texts: Sequence[str], *, dimensions: int = 64, seed: int = 0) -> LsaEmbedder:
        """Train on ``texts``; ``dimensions`` is capped below the number of texts/terms."""
        if len(texts) < 2:
            raise RetrievalError(f"an LSA embedder needs at least 2 texts, got {len(texts)}")
        vectorizer = _vectorizer()
        matrix = vectorizer.fit_transform(texts)
        rank = min(dimensions, matrix.shape[0] - 1, matrix.shape[1] - 1)
        if rank < 1:
            raise RetrievalError("the texts have too few distinct terms to embed")
        from sklearn.decomposition import TruncatedSVD

        svd = TruncatedSVD(n_components=rank, algorithm="arpack", random_state=seed)
        svd.fit(matrix)
        return cls(vectorizer, svd.components_)

    def embed(self, texts: Sequence[str]) -> np.ndarray[Any, Any]:
        """One L2-normalised float32 row per text (a text with no known term: zeros)."""
        projected = self._vectorizer.transform(list(texts)) @ self._components.T
        rows = np.asarray(projected, dtype=np.float32)
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        unit: np.ndarray[Any, Any] = np.divide(rows, norms, out=np.zeros_like(rows),
                                               where=norms > 0)
        return unit

    def save(self, directory: Path) -> None:
        """Write the fitted embedder into ``directory`` (JSON + npz, no pickle)."""
        directory.mkdir(parents=True, exist_ok=True)
        vocabulary = {term: int(index) for term, index in self._vectorizer.vocabulary_.items()}
        (directory / SETTINGS_FILE).write_text(
            json.dumps({"format": FORMAT, "vocabulary": vocabulary}, sort_keys=True))
        np.savez(directory / ARRAYS_FILE, idf=self._vectorizer.idf_,
                 components=self._components)

    @classmethod
    def load(cls, directory: Path) -> LsaEmbedder:
        """Read an embedder :meth:`save` wrote; RetrievalError naming the file if unusable."""
        settings_path = directory / SETTINGS_FILE
        try:
            settings = json.loads(settings_path.read_text())
            with np.load(directory / ARRAYS_FILE, allow_pickle=False) as arrays:
                idf, components = arrays["idf"], arrays["components"]
        except (OSError, ValueError, KeyError) as exc:
            raise RetrievalError(f"cannot read the embedder in {directory}: {exc}") from exc
        if settings.get("format") != FORMAT:
            raise RetrievalError(f"{settings_path}: format {settings.get('format')!r}, "
                                 f"expected {FORMAT}")
        vectorizer = _vectorizer({str(k): int(v) for k, v in settings["vocabulary"].items()})
        vectorizer.idf_ = idf
        return cls(vectorizer, components)
