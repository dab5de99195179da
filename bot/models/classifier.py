"""The learned local tier: a per-repository classifier of an issue's kind, trained on its labelled history.

Two views of an issue, each with its own base model, stacked by a multinomial logistic regression:

* **text**: TF-IDF over the title alone, and over title + body as word 1-2-grams and character 2-5-grams
  (code blocks, HTML comments and URLs replaced by placeholder words - what an issue *says* matters more
  than what it pastes - plus a marker when a pasted block holds an error/traceback, and a few marker words
  for question-shaped titles, feature-request and bug-report phrasing). Base model: a linear SVM.
* **embedding** (optional): wordllama static embeddings (shipped inside the PyPI package) of the title and
  of the cleaned body, separately. Base model: logistic regression. Used when
  ``get_embedder("wordllama")`` loads; otherwise the classifier is text-only, and the saved classifier
  records which views it was trained with (``IssueClassifier.features``).

The meta-model is fitted on the base models' out-of-fold scores (inner 5-fold CV), so its ``probs`` are
calibrated multinomial probabilities the cascade can threshold (better calibrated and slightly more
accurate than one-vs-rest sigmoid calibration of the SVM alone; see docs/benchmarks-triage.md). Trains in
about a second per 300 issues on one core; serialises to bytes (pickle) for storing in SQLite.
"""
from __future__ import annotations

import io
import logging
import os
import pickle
import re
import threading
import time
from collections import Counter
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin

from bot.models.base import KINDS, TIER_CLASSIFIER, IssueText, Prediction, normalise_probs, top_kind

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
MIN_PER_KIND = 20  # below this many labelled issues of a kind the repo's classifier is not used for it
INNER_FOLDS = 5  # out-of-fold scores for the meta-model
EMBEDDER = "wordllama"  # FIRST_RESPONDER_CLASSIFIER_EMBEDDER=none turns the embedding view off
FEATURES_TEXT = "tfidf"

_CODE_BLOCK = re.compile(r"```.*?(```|\Z)", re.S)
_HTML_COMMENT = re.compile(r"<!--.*?(-->|\Z)", re.S)
_URL = re.compile(r"https?://\S+")
_ERROR = re.compile(r"traceback|exception|error|errno|fatal|panic|segmentation fault|stack trace|core dumped",
                    re.I)
_TITLE_QUESTION = re.compile(r"^(how|what|why|is|are|can|could|does|do|should|where|when|which)\b", re.I)
_FEATURE_WORDS = re.compile(r"\b(feature request|proposal|add support|support for|would be nice|allow)\b", re.I)
_BUG_WORDS = re.compile(r"\b(steps to reproduce|expected behaviou?r|actual behaviou?r|regression|crash)", re.I)
_QUESTION_WORDS = re.compile(r"\b(how (do|can|to)|is it possible|question)\b", re.I)


def _code_placeholder(match: re.Match) -> str:
    return " codeblock codeerror " if _ERROR.search(match.group(0)) else " codeblock "


def clean_body(body: str) -> str:
    """The body with pasted material replaced by placeholder words (errors in code blocks marked)."""
    body = _CODE_BLOCK.sub(_code_placeholder, body or "")
    body = _HTML_COMMENT.sub(" ", body)
    return _URL.sub(" urltoken ", body)[:6000]


def marker_words(title: str, body: str) -> str:
    """A few general cues as words the TF-IDF can weigh: question-shaped title, feature/bug/question phrasing."""
    title = (title or "").strip()
    head = f"{title} {body[:2000]}"
    words = []
    if title.endswith("?"):
        words.append("kwtitleq")
    if _TITLE_QUESTION.match(title):
        words.append("kwtitlewh")
    if _FEATURE_WORDS.search(head):
        words.append("kwfeat")
    if _BUG_WORDS.search(body):
        words.append("kwbug")
    if _QUESTION_WORDS.search(head):
        words.append("kwq")
    return " ".join(words)


def clean_text(title: str, body: str) -> str:
    """Title twice (it carries the most signal per word), the marker words, then the cleaned body."""
    body = clean_body(body)
    title = title or ""
    return f"{title}\n{title}\n{marker_words(title, body)}\n{body}"


class Doc(NamedTuple):
    """What the pipeline consumes for one issue (``_docs``)."""

    title: str
    text: str  # clean_text(title, body)
    body: str  # clean_body(body)


def _docs(issues: Iterable[IssueText]) -> list[Doc]:
    out = []
    for issue in issues:
        body = clean_body(issue.body)
        title = issue.title or ""
        out.append(Doc(title, f"{title}\n{title}\n{marker_words(title, body)}\n{body}", body))
    return out


def _titles(docs: Sequence[Doc]) -> list[str]:
    return [doc[0] for doc in docs]


def _texts(docs: Sequence[Doc]) -> list[str]:
    return [doc[1] for doc in docs]


# -------------------------------------------------------------------------------- embedding view
_embedders: dict[str, Any] = {}
_embedders_lock = threading.Lock()


def _embedder(name: str) -> Any:
    """The named embedder (``bot.index.embed``), loaded once per process; None if unavailable."""
    with _embedders_lock:
        if name not in _embedders:
            from bot.index.embed import get_embedder

            _embedders[name] = get_embedder(name)
        return _embedders[name]


def default_embedder() -> str | None:
    """The embedder new classifiers use: wordllama where it loads (``FIRST_RESPONDER_CLASSIFIER_EMBEDDER``
    names another or ``none``)."""
    name = os.environ.get("FIRST_RESPONDER_CLASSIFIER_EMBEDDER", EMBEDDER)
    if not name or name == "none":
        return None
    return name if _embedder(name) is not None else None


class Views:
    """The feature blocks of a batch of issues: the sparse TF-IDF block and, optionally, the embeddings."""

    def __init__(self, blocks: list[Any]) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return self.blocks[0].shape[0]


class IssueFeatures(TransformerMixin, BaseEstimator):
    """Transformer: docs -> ``Views`` (TF-IDF of title / text words / text chars; embeddings of title and body)."""

    def __init__(self, embedder: str | None = None) -> None:
        self.embedder = embedder

    def _vectorisers(self) -> list[tuple[Any, Any]]:
        from sklearn.feature_extraction.text import TfidfVectorizer

        return [
            (_titles, TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)),
            (_texts, TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, max_df=0.9)),
            (_texts, TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, max_features=60000)),
        ]

    def fit(self, docs: Sequence[Doc], y: Any = None) -> "IssueFeatures":
        self.fit_transform(docs, y)
        return self

    def fit_transform(self, docs: Sequence[Doc], y: Any = None) -> Views:
        import scipy.sparse as sp

        self.vectorisers_ = self._vectorisers()
        text = sp.hstack([vec.fit_transform(pick(docs)) for pick, vec in self.vectorisers_]).tocsr()
        return Views([text] + self._embed(docs))

    def transform(self, docs: Sequence[Doc]) -> Views:
        import scipy.sparse as sp

        text = sp.hstack([vec.transform(pick(docs)) for pick, vec in self.vectorisers_]).tocsr()
        return Views([text] + self._embed(docs))

    def _embed(self, docs: Sequence[Doc]) -> list[np.ndarray]:
        if not self.embedder:
            return []
        embedder = _embedder(self.embedder)
        if embedder is None:
            raise RuntimeError(f"this classifier was trained with the {self.embedder} embedder, which is not "
                               "installed; install it or retrain")
        titles = embedder.embed([doc.title or " " for doc in docs])
        bodies = embedder.embed([doc.body.strip() or " " for doc in docs])
        return [np.hstack([titles, bodies]).astype(np.float32)]


class StackedClassifier(ClassifierMixin, BaseEstimator):
    """A base model per view (linear SVM on the sparse text block, logistic regression on embeddings);
    a multinomial logistic regression on their out-of-fold scores gives the calibrated probabilities."""

    def __init__(self, text_C: float = 0.3, embed_C: float = 2.0, meta_C: float = 1.0,
                 folds: int = INNER_FOLDS, seed: int = 0) -> None:
        self.text_C = text_C
        self.embed_C = embed_C
        self.meta_C = meta_C
        self.folds = folds
        self.seed = seed

    def _base(self, block_index: int) -> Any:
        from sklearn.linear_model import LogisticRegression
        from sklearn.svm import LinearSVC

        if block_index == 0:
            return LinearSVC(C=self.text_C, random_state=self.seed)
        return LogisticRegression(C=self.embed_C, max_iter=3000)

    @staticmethod
    def _scores(model: Any, X: Any) -> np.ndarray:
        scores = model.decision_function(X) if hasattr(model, "decision_function") else model.predict_log_proba(X)
        return scores[:, None] if scores.ndim == 1 else scores

    def fit(self, views: Views, y: Sequence[str], sample_weight: Sequence[float] | None = None) -> "StackedClassifier":
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold

        y = np.asarray(y)
        weights = None if sample_weight is None else np.asarray(sample_weight, dtype=float)
        self.classes_ = np.unique(y)
        folds = max(2, min(self.folds, int(min(Counter(y.tolist()).values()))))
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=self.seed)
        splits = list(splitter.split(np.zeros(len(y)), y))
        self.bases_, columns = [], []
        for b, X in enumerate(views.blocks):
            oof = None
            for train, test in splits:
                model = self._base(b).fit(X[train], y[train], sample_weight=None if weights is None else weights[train])
                scores = self._scores(model, X[test])
                if oof is None:
                    oof = np.zeros((len(y), scores.shape[1]))
                oof[test] = scores
            self.bases_.append(self._base(b).fit(X, y, sample_weight=weights))
            columns.append(oof)
        self.meta_ = LogisticRegression(C=self.meta_C, max_iter=3000).fit(np.hstack(columns), y, sample_weight=weights)
        return self

    def predict_proba(self, views: Views) -> np.ndarray:
        columns = [self._scores(model, X) for model, X in zip(self.bases_, views.blocks)]
        return self.meta_.predict_proba(np.hstack(columns))

    def predict(self, views: Views) -> np.ndarray:
        return self.classes_[self.predict_proba(views).argmax(axis=1)]


def build_pipeline(seed: int = 0, embedder: str | None | bool = True) -> Any:
    """The untrained scikit-learn pipeline (``features`` -> stacked ``classifier``) over ``_docs`` output.

    ``embedder``: True = the default (wordllama where installed), None/False = text only, or a name.
    """
    from sklearn.pipeline import Pipeline

    if embedder is True:
        embedder = default_embedder()
    return Pipeline([("features", IssueFeatures(embedder or None)), ("classifier", StackedClassifier(seed=seed))])


def pipeline_features(pipeline: Any) -> list[str]:
    """Which views a (trained) pipeline uses, e.g. ``["tfidf", "wordllama-256"]``."""
    features = [FEATURES_TEXT]
    embedder = getattr(pipeline.named_steps["features"], "embedder", None)
    if embedder:
        loaded = _embedder(embedder)
        features.append(getattr(loaded, "name", embedder) if loaded is not None else embedder)
    return features


class IssueClassifier:
    """A trained per-repository classifier behind the ``Model`` interface."""

    tier = TIER_CLASSIFIER

    def __init__(self, pipeline: Any, kinds: Sequence[str], *, repo: str = "", n_train: int = 0,
                 trained_at: float | None = None, counts: dict[str, int] | None = None,
                 features: Sequence[str] | None = None) -> None:
        self.pipeline = pipeline
        self.kinds = tuple(kinds)
        self.repo = repo
        self.n_train = n_train
        self.trained_at = trained_at or time.time()
        self.counts = counts or {}
        self.features = list(features) if features is not None else pipeline_features(pipeline)
        self.model_id = f"classifier:{repo or 'repo'}:{n_train}"

    @classmethod
    def train(cls, issues: Sequence[IssueText], labels: Sequence[str], *, repo: str = "",
              seed: int = 0) -> "IssueClassifier":
        """Fit on labelled issues (labels are kinds). Needs at least two kinds with 5+ examples each."""
        if len(issues) != len(labels):
            raise ValueError("issues and labels differ in length")
        counts = Counter(labels)
        unknown = set(counts) - set(KINDS)
        if unknown:
            raise ValueError(f"labels must be kinds ({', '.join(KINDS)}); got {sorted(unknown)}")
        if len([k for k, n in counts.items() if n >= 5]) < 2:
            raise ValueError("need at least two kinds with 5 or more labelled issues each")
        pipeline = build_pipeline(seed)
        if min(counts.values()) < 5:  # the inner folds need 5 of each class
            keep = [i for i, label in enumerate(labels) if counts[label] >= 5]
            issues, labels = [issues[i] for i in keep], [labels[i] for i in keep]
            counts = Counter(labels)
        pipeline.fit(_docs(issues), list(labels))
        kinds = [str(k) for k in pipeline.classes_]
        return cls(pipeline, kinds, repo=repo, n_train=len(labels), counts=dict(counts))

    def usable(self, min_per_kind: int = MIN_PER_KIND) -> bool:
        """Enough history to trust: at least two kinds, each with ``min_per_kind`` examples."""
        return len([k for k, n in self.counts.items() if n >= min_per_kind]) >= 2

    def predict_proba(self, issues: Sequence[IssueText]) -> list[dict[str, float]]:
        """Probabilities over all KINDS (kinds never seen in training get 0)."""
        matrix = self.pipeline.predict_proba(_docs(issues))
        return [normalise_probs(dict(zip(self.kinds, map(float, row)))) for row in matrix]

    def predict(self, issue: IssueText) -> Prediction:
        started = time.perf_counter()
        probs = self.predict_proba([issue])[0]
        kind, confidence = top_kind(probs)
        return Prediction(kind=kind, confidence=confidence, probs=probs, tier=self.tier, model=self.model_id,
                          latency_ms=(time.perf_counter() - started) * 1000)

    # -- storage ---------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Serialise (pickle; only ever loaded from our own database). Records the views it uses."""
        buffer = io.BytesIO()
        pickle.dump({"version": FORMAT_VERSION, "pipeline": self.pipeline, "kinds": self.kinds,
                     "repo": self.repo, "n_train": self.n_train, "trained_at": self.trained_at,
                     "counts": self.counts, "features": self.features}, buffer, protocol=pickle.HIGHEST_PROTOCOL)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "IssueClassifier":
        state = pickle.loads(data)  # noqa: S301 - written by to_bytes into our own database
        if state.get("version") != FORMAT_VERSION:
            raise ValueError(f"classifier format {state.get('version')} is not {FORMAT_VERSION}; retrain")
        embedder = getattr(state["pipeline"].named_steps["features"], "embedder", None)
        if embedder and _embedder(embedder) is None:
            raise ValueError(f"classifier uses the {embedder} embedder, which is not installed; retrain")
        return cls(state["pipeline"], state["kinds"], repo=state["repo"], n_train=state["n_train"],
                   trained_at=state["trained_at"], counts=state["counts"], features=state.get("features"))


def save_classifier(db: Any, repo: str, classifier: IssueClassifier) -> None:
    """Store a repo's classifier in the ``classifiers`` table (one row per repo, replaced on retrain)."""
    db["classifiers"].insert({"repo": repo, "trained_at": classifier.trained_at, "n_train": classifier.n_train,
                              "model": classifier.to_bytes()}, pk="repo", replace=True)


def load_classifier(db: Any, repo: str) -> IssueClassifier | None:
    """The repo's stored classifier, or ``None``."""
    if "classifiers" not in db.table_names():
        return None
    row = db.execute("SELECT model FROM classifiers WHERE repo = ?", [repo]).fetchone()
    return IssueClassifier.from_bytes(row[0]) if row else None
