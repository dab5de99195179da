"""The learned local tier: a per-repository classifier of an issue's kind, trained on its labelled history.

Features are TF-IDF over the title alone, and over title + body as word 1-2-grams and character 2-5-grams
(code blocks, HTML comments and URLs replaced by placeholder words: what an issue *says* matters more
than what it pastes). A linear SVM is wrapped in cross-validated sigmoid calibration, so ``probs`` are
calibrated probabilities the cascade can threshold. Trains in well under a second per 300 issues on one
core; serialises to bytes (pickle) for storing in SQLite.
"""
from __future__ import annotations

import io
import pickle
import re
import time
from collections import Counter
from typing import Any, Iterable, Sequence

from bot.models.base import KINDS, TIER_CLASSIFIER, IssueText, Prediction, normalise_probs, top_kind

FORMAT_VERSION = 1
MIN_PER_KIND = 20  # below this many labelled issues of a kind the repo's classifier is not used for it

_CODE_BLOCK = re.compile(r"```.*?(```|\Z)", re.S)
_HTML_COMMENT = re.compile(r"<!--.*?(-->|\Z)", re.S)
_URL = re.compile(r"https?://\S+")


def clean_text(title: str, body: str) -> str:
    """Title twice (it carries the most signal per word) plus the body with pasted material replaced."""
    body = _CODE_BLOCK.sub(" codeblock ", body or "")
    body = _HTML_COMMENT.sub(" ", body)
    body = _URL.sub(" urltoken ", body)
    title = title or ""
    return f"{title}\n{title}\n{body[:6000]}"


def _titles(docs: Sequence[tuple[str, str]]) -> list[str]:
    return [title for title, _ in docs]


def _texts(docs: Sequence[tuple[str, str]]) -> list[str]:
    return [text for _, text in docs]


def build_pipeline(seed: int = 0) -> Any:
    """The untrained scikit-learn pipeline (features + calibrated linear SVM)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion, Pipeline, make_pipeline
    from sklearn.preprocessing import FunctionTransformer
    from sklearn.svm import LinearSVC

    features = FeatureUnion([
        ("title", make_pipeline(FunctionTransformer(_titles),
                                TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True))),
        ("words", make_pipeline(FunctionTransformer(_texts),
                                TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, max_df=0.9))),
        ("chars", make_pipeline(FunctionTransformer(_texts),
                                TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True,
                                                max_features=60000))),
    ])
    classifier = CalibratedClassifierCV(LinearSVC(C=0.3, random_state=seed), method="sigmoid", cv=5)
    return Pipeline([("features", features), ("classifier", classifier)])


def _docs(issues: Iterable[IssueText]) -> list[tuple[str, str]]:
    return [(issue.title or "", clean_text(issue.title, issue.body)) for issue in issues]


class IssueClassifier:
    """A trained per-repository classifier behind the ``Model`` interface."""

    tier = TIER_CLASSIFIER

    def __init__(self, pipeline: Any, kinds: Sequence[str], *, repo: str = "", n_train: int = 0,
                 trained_at: float | None = None, counts: dict[str, int] | None = None) -> None:
        self.pipeline = pipeline
        self.kinds = tuple(kinds)
        self.repo = repo
        self.n_train = n_train
        self.trained_at = trained_at or time.time()
        self.counts = counts or {}
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
        if min(counts.values()) < 5:  # the calibration's 5 folds need 5 of each class
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
        """Serialise (pickle; only ever loaded from our own database)."""
        buffer = io.BytesIO()
        pickle.dump({"version": FORMAT_VERSION, "pipeline": self.pipeline, "kinds": self.kinds,
                     "repo": self.repo, "n_train": self.n_train, "trained_at": self.trained_at,
                     "counts": self.counts}, buffer, protocol=pickle.HIGHEST_PROTOCOL)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "IssueClassifier":
        state = pickle.loads(data)  # noqa: S301 - written by to_bytes into our own database
        if state.get("version") != FORMAT_VERSION:
            raise ValueError(f"classifier format {state.get('version')} is not {FORMAT_VERSION}; retrain")
        return cls(state["pipeline"], state["kinds"], repo=state["repo"], n_train=state["n_train"],
                   trained_at=state["trained_at"], counts=state["counts"])


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
