"""The weekly digest's pure parts: score and ranking, counts by state reason, week windows, markdown.

Issue #7 is the specification. The Mermaid block is checked against the ``xychart-beta`` grammar
(mermaid.js.org/syntax/xyChart) by a small validator here, and the whole markdown is pinned for a
small seeded repository so any change to the digest's text shows up in review.
"""
from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone

import pytest

from bot.core import digest
from bot.core.digest import Counts, ScoreParts

NOW = datetime(2024, 3, 11, 9, 0, tzinfo=timezone.utc)


def ts(year: int, month: int, day: int, hour: int = 12) -> str:
    return datetime(year, month, day, hour, tzinfo=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


ISSUES = [
    {"number": 1, "title": "Crash when | pipe in @name", "state": "open", "created_at": ts(2023, 12, 1),
     "updated_at": ts(2024, 3, 9), "labels": [{"name": "bug"}], "reactions": {"+1": 10, "heart": 2, "-1": 1},
     "comments": 5, "commenters": ["a", "b", "c", "a"], "user": {"login": "u1", "type": "User"},
     "summary": "Crashes on start when the path has a pipe."},
    {"number": 2, "title": "Dark mode", "state": "open", "created_at": ts(2024, 3, 5), "updated_at": ts(2024, 3, 10),
     "labels": [{"name": "enhancement"}], "reactions": {"+1": 3, "eyes": 1}, "comments": 2,
     "user": {"login": "u2", "type": "User"}},
    {"number": 3, "title": "Old question", "state": "closed", "state_reason": "completed",
     "created_at": ts(2024, 3, 4), "closed_at": ts(2024, 3, 6), "labels": [], "reactions": {}, "comments": 1,
     "user": {"login": "u3", "type": "User"}},
    {"number": 4, "title": "Wontfix", "state": "closed", "state_reason": "not_planned", "created_at": ts(2024, 2, 1),
     "closed_at": ts(2024, 3, 7), "labels": [], "reactions": {}, "comments": 0, "user": {"login": "u4", "type": "User"}},
    {"number": 5, "title": "Dup", "state": "closed", "state_reason": "duplicate", "created_at": ts(2024, 3, 8),
     "closed_at": ts(2024, 3, 8, 13), "labels": [], "reactions": {}, "comments": 0,
     "user": {"login": "u5", "type": "User"}},
    {"number": 6, "title": "Last week", "state": "closed", "state_reason": None, "created_at": ts(2024, 2, 27),
     "closed_at": ts(2024, 2, 28), "labels": [], "reactions": {}, "comments": 0,
     "user": {"login": "u6", "type": "User"}},
    {"number": 7, "title": "Needs logs", "state": "open", "created_at": ts(2024, 2, 20), "updated_at": ts(2024, 2, 21),
     "labels": [{"name": "needs-info"}], "reactions": {"confused": 2}, "comments": 1,
     "user": {"login": "u7", "type": "User"}},
    {"number": 8, "title": "Weekly digest", "state": "open", "created_at": ts(2024, 3, 4, 9),
     "updated_at": ts(2024, 3, 4, 9), "labels": [{"name": "digest"}], "reactions": {"+1": 50}, "comments": 0,
     "user": {"login": "first-responder[bot]", "type": "Bot"}},
    {"number": 9, "title": "A PR", "state": "open", "pull_request": {"url": "x"}, "created_at": ts(2024, 3, 5),
     "updated_at": ts(2024, 3, 5), "labels": [], "reactions": {"+1": 99}, "comments": 0,
     "user": {"login": "u9", "type": "User"}},
]


def seeded_markdown() -> str:
    start, end = digest.week_bounds("2024-W10")
    counts = digest.counts(ISSUES, start, end, exclude_labels=["digest"])
    top = digest.rank(ISSUES, NOW, top=3, exclude_labels=["digest"])
    waiting_maintainer = digest.needs_maintainer(ISSUES, {1: [{"user": {"login": "maint"}}]}, {"maint"},
                                                 exclude_labels=["digest"])
    waiting = [(ISSUES[6], "ping", datetime(2024, 3, 14, 12, tzinfo=timezone.utc))]
    daily = digest.daily_opened_closed(ISSUES, end, days=14, exclude_labels=["digest"])
    return digest.render("octo/repo", "2024-W10", counts, top, waiting_maintainer, waiting, [(5, 2)], daily,
                         bounds=(start, end))


EXPECTED_MARKDOWN = "\n".join([
    '<!-- first-responder:digest:2024-W10 -->',
    '',
    '# Weekly digest for octo/repo: 2024-W10 (2024-03-04 09:00 – 2024-03-11 09:00 UTC)',
    '',
    '## Counts',
    '',
    '| | this week | change from the week before |',
    '|---|---:|---:|',
    '| Opened | 3 | +2 |',
    '| Closed as completed | 1 | ±0 |',
    '| Closed as not planned | 1 | +1 |',
    '| Closed as duplicate | 1 | +1 |',
    '| Still open | 3 | ±0 |',
    '',
    '## Top issues (3)',
    '',
    'Score = reactions (👍 ❤️ 2, 🎉 🚀 😄 👀 1, 👎 😕 0.5) + 1.5 per commenter + recent activity (up to 10) + age (up to 6).',
    '',
    '| # | issue | labels | score | reactions | discussion | recent | age |',
    '|---:|---|---|---:|---|---:|---:|---:|',
    '| 1 | '
    '[#1](https://github.com/octo/repo/issues/1) Crash when \\| pipe in @\u200bname — Crashes on start when the path has a pipe. | '
    '`bug` | 39.79 | 👍 10 ❤️ 2 👎 1 (24.5) | 4.5 | 9.11 | 1.68 |',
    '| 2 | [#2](https://github.com/octo/repo/issues/2) Dark mode | `enhancement` | 19.68 | '
    '👍 3 👀 1 (7) | 3 | 9.58 | 0.1 |',
    '| 3 | [#7](https://github.com/octo/repo/issues/7) Needs logs | `needs-info` | 6.76 | '
    '😕 2 (1) | 1.5 | 3.93 | 0.33 |',
    '',
    '## Needs a maintainer (2)',
    '',
    'Open issues with no reply from anyone with write access, oldest first.',
    '',
    '- [#7](https://github.com/octo/repo/issues/7) Needs logs (opened 2024-02-20)',
    '- [#2](https://github.com/octo/repo/issues/2) Dark mode (opened 2024-03-05)',
    '',
    '## Waiting on authors (1)',
    '',
    '- [#7](https://github.com/octo/repo/issues/7) Needs logs: ping on 2024-03-14',
    '',
    '## Possible duplicates (1)',
    '',
    '- #5 may duplicate #2',
    '',
    '## Opened and closed per day, last 2 weeks',
    '',
    '```mermaid',
    'xychart-beta',
    '    title "Issues opened (bars) and closed (line) per day"',
    '    x-axis ["02-26", "02-27", "02-28", "02-29", "03-01", "03-02", "03-03", "03-04", "03-05", "03-06", "03-07", "03-08", "03-09", "03-10"]',
    '    y-axis "Issues" 0 --> 1',
    '    bar [0, 1, 0, 0, 0, 0, 0, 1, 1, 0, 0, 1, 0, 0]',
    '    line [0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0]',
    '```',
    '',
])


def test_markdown_pinned_for_seeded_repository():
    assert seeded_markdown() == EXPECTED_MARKDOWN


# ------------------------------------------------------------------------------------------ score / rank


def test_score_parts_follow_the_documented_formula():
    issue = {"number": 1, "created_at": ts(2024, 1, 11, 9), "updated_at": ts(2024, 2, 12, 9),
             "reactions": {"+1": 2, "heart": 1, "hooray": 1, "-1": 2, "confused": 2}, "commenters": ["a", "B", "b"]}
    parts = digest.score(issue, NOW)
    assert parts == ScoreParts(reactions=2 * 3 + 1 + 0.5 * 4, commenters=3.0, recency=2.5, age=1.0)
    assert parts.total == 15.5


def test_thumbs_up_and_heart_weigh_more_than_thumbs_down_and_confused():
    base = {"number": 1, "created_at": ts(2024, 3, 1), "updated_at": ts(2024, 3, 1)}
    liked = digest.score({**base, "reactions": {"+1": 1, "heart": 1}}, NOW)
    disliked = digest.score({**base, "reactions": {"-1": 1, "confused": 1}}, NOW)
    assert liked.reactions > disliked.reactions > 0


def test_commenters_fall_back_to_comment_count():
    assert digest.score({"number": 1, "comments": 4, "created_at": ts(2024, 3, 1)}, NOW).commenters == 6.0


def test_age_is_capped():
    ancient = {"number": 1, "created_at": ts(2010, 1, 1), "updated_at": ts(2010, 1, 1)}
    assert digest.score(ancient, NOW).age == digest.AGE_POINTS_MAX


def test_rank_order_open_issues_only_best_first():
    ranked = digest.rank(ISSUES, NOW)
    assert [issue["number"] for issue, _ in ranked] == [8, 1, 2, 7]  # no closed issues, no pull request


def test_rank_excludes_labels_and_cuts_to_top():
    ranked = digest.rank(ISSUES, NOW, top=2, exclude_labels=["DIGEST"])
    assert [issue["number"] for issue, _ in ranked] == [1, 2]


def test_rank_ties_go_to_reactions_then_older_issue():
    common = {"state": "open", "created_at": ts(2024, 3, 1), "updated_at": ts(2024, 3, 1)}
    issues = [
        {**common, "number": 5, "reactions": {"+1": 1}},
        {**common, "number": 3, "reactions": {"+1": 1}},
        {**common, "number": 4, "reactions": {"heart": 1}, "commenters": []},
        {**common, "number": 6, "reactions": {}, "commenters": ["a"]},  # 1.5 points of discussion...
        {**common, "number": 7, "reactions": {"-1": 3}, "commenters": []},  # ...tie with 1.5 of reactions
    ]
    assert [issue["number"] for issue, _ in digest.rank(issues, NOW)] == [3, 4, 5, 7, 6]


# ------------------------------------------------------------------------------------------ counts


def test_counts_by_state_reason_and_change_from_week_before():
    start, end = digest.week_bounds("2024-W10")
    counts = digest.counts(ISSUES, start, end, exclude_labels=["digest"])
    assert counts == Counts(opened=3, closed_completed=1, closed_not_planned=1, closed_duplicate=1, still_open=3,
                            previous=Counts(1, 1, 0, 0, 3))
    assert counts.closed == 3


def test_counts_missing_state_reason_is_completed_and_windows_are_half_open():
    start, end = digest.week_bounds("2024-W10")
    issues = [
        {"number": 1, "state": "closed", "state_reason": None, "created_at": ts(2024, 3, 4, 9),
         "closed_at": ts(2024, 3, 11, 9)},
    ]
    counts = digest.counts(issues, start, end)
    assert (counts.opened, counts.closed_completed, counts.still_open) == (1, 0, 1)
    following = digest.counts(issues, end, end + (end - start))
    assert (following.opened, following.closed_completed, following.still_open) == (0, 1, 0)


def test_counts_leave_out_pull_requests_and_digest_issues():
    start, end = digest.week_bounds("2024-W10")
    assert digest.counts(ISSUES, start, end).opened == 4  # the digest issue counts unless excluded


# ------------------------------------------------------------------------------------------ weeks


def test_week_bounds_default_monday_nine_utc():
    start, end = digest.week_bounds("2024-W10")
    assert (start, end) == (datetime(2024, 3, 4, 9, tzinfo=timezone.utc), datetime(2024, 3, 11, 9, tzinfo=timezone.utc))
    assert digest.title(start, end) == "Weekly digest: 2024-03-04 – 2024-03-11"


def test_week_bounds_friday_evening_in_a_timezone():
    start, end = digest.week_bounds("2024-W10", "friday", 17, "Europe/Berlin")
    assert start.isoformat() == "2024-03-01T17:00:00+01:00"
    assert end.isoformat() == "2024-03-08T17:00:00+01:00"


def test_week_bounds_keep_local_hour_across_daylight_saving():
    start, end = digest.week_bounds("2024-W13", "monday", 9, "Europe/Berlin")  # clocks change 31 March
    assert (start.hour, end.hour) == (9, 9)
    assert end.astimezone(timezone.utc) - start.astimezone(timezone.utc) == timedelta(days=7, hours=-1)


def test_week_bounds_from_a_date_and_year_edges():
    assert digest.week_bounds(date(2024, 3, 6)) == digest.week_bounds("2024-W10")
    start, end = digest.week_bounds("2020-W53")
    assert (start.date(), end.date()) == (date(2020, 12, 28), date(2021, 1, 4))


@pytest.mark.parametrize("day", digest.DAYS)
@pytest.mark.parametrize("hour", [0, 9, 23])
def test_every_day_and_hour_names_its_own_week(day, hour):
    start, end = digest.week_bounds("2024-W10", day, hour, "America/New_York")
    assert digest.week_label(start, end) == "2024-W10"
    assert digest.latest_week(end, day, hour, "America/New_York") == "2024-W10"
    assert digest.week_bounds("2024-W11", day, hour, "America/New_York")[0] == end


def test_latest_week_is_the_newest_finished_window():
    assert digest.latest_week(datetime(2024, 3, 11, 9, tzinfo=timezone.utc)) == "2024-W10"
    assert digest.latest_week(datetime(2024, 3, 11, 8, 59, tzinfo=timezone.utc)) == "2024-W09"


@pytest.mark.parametrize("bad", ["2024-10", "2024W10", "24-W10", "2024-W99"])
def test_week_bounds_rejects_bad_weeks(bad):
    with pytest.raises(ValueError):
        digest.week_bounds(bad)


# ------------------------------------------------------------------------------------------ lists


def test_needs_maintainer_oldest_first_without_writer_replies():
    comments = {1: [{"user": {"login": "Maint"}}], 2: [{"user": {"login": "u9"}}]}
    waiting = digest.needs_maintainer(ISSUES, comments, {"maint"}, exclude_labels=["digest"])
    assert [issue["number"] for issue in waiting] == [7, 2]


def test_needs_maintainer_skips_issues_opened_by_writers_and_bots():
    waiting = digest.needs_maintainer(ISSUES, {}, {"u2"})
    assert [issue["number"] for issue in waiting] == [1, 7]


def test_daily_series_covers_whole_days_before_the_end():
    start, end = digest.week_bounds("2024-W10")
    series = digest.daily_opened_closed(ISSUES, end, exclude_labels=["digest"])
    assert len(series) == 56
    assert series[-1][0] == date(2024, 3, 10) and series[0][0] == date(2024, 1, 15)
    assert sum(opened for _, opened, _ in series) == 6
    assert sum(closed for _, _, closed in series) == 4


# ------------------------------------------------------------------------------------------ Mermaid

_QUOTED_OR_WORD = r'(?:"[^"\n]*"|[^\s",\[\]]+)'
_NUMBER = r"-?(?:\d+\.?\d*|\.\d+)"
_XYCHART_LINES = [
    re.compile(rf"title {_QUOTED_OR_WORD}$"),
    re.compile(rf"x-axis(?: {_QUOTED_OR_WORD})? \[{_QUOTED_OR_WORD}(?:, ?{_QUOTED_OR_WORD})*\]$"),
    re.compile(rf"y-axis(?: {_QUOTED_OR_WORD})?(?: {_NUMBER} --> {_NUMBER})?$"),
    re.compile(rf"(?:line|bar)(?: {_QUOTED_OR_WORD})? \[{_NUMBER}(?:, ?{_NUMBER})*\]$"),
]


def mermaid_blocks(markdown: str) -> list[list[str]]:
    return [block.strip("\n").split("\n") for block in re.findall(r"```mermaid\n(.*?)```", markdown, re.S)]


def assert_valid_xychart(lines: list[str]) -> None:
    """The xychart-beta grammar (mermaid.js.org/syntax/xyChart), strict enough to catch our mistakes."""
    assert lines[0] == "xychart-beta"
    categories = None
    for line in lines[1:]:
        statement = line.strip()
        assert any(pattern.match(statement) for pattern in _XYCHART_LINES), statement
        if statement.startswith("x-axis"):
            categories = re.findall(_QUOTED_OR_WORD, statement[statement.index("[") + 1:-1])
        if statement.startswith(("line", "bar")):
            values = statement[statement.index("[") + 1:-1].split(",")
            assert categories is not None and len(values) == len(categories)
        if statement.startswith("y-axis") and "-->" in statement:
            low, high = (float(value) for value in statement.split('"')[-1].split("-->"))
            assert low < high


def test_mermaid_block_is_valid_xychart_syntax():
    [block] = mermaid_blocks(seeded_markdown())
    assert_valid_xychart(block)
    assert [line.split()[0] for line in block] == ["xychart-beta", "title", "x-axis", "y-axis", "bar", "line"]


def test_mermaid_chart_for_eight_weeks_and_for_no_activity():
    start, end = digest.week_bounds("2024-W10")
    for issues in (ISSUES, []):
        chart = digest.mermaid_chart(digest.daily_opened_closed(issues, end))
        [block] = mermaid_blocks(chart)
        assert_valid_xychart(block)
        assert block[2].count(",") == 55
    assert 'y-axis "Issues" 0 --> 1' in digest.mermaid_chart(digest.daily_opened_closed([], end))


def test_render_carries_hidden_week_marker_and_neutralises_mentions():
    markdown = seeded_markdown()
    assert markdown.startswith("<!-- first-responder:digest:2024-W10 -->")
    assert "@name" not in markdown and "@\u200bname" in markdown
    assert "Crash when \\| pipe" in markdown


def test_render_without_anything_to_report():
    start, end = digest.week_bounds("2024-W10")
    markdown = digest.render("octo/repo", "2024-W10", digest.counts([], start, end), [], [], [], [],
                             digest.daily_opened_closed([], end))
    assert "No open issues." in markdown
    assert "Every open issue has an answer from a maintainer." in markdown
    assert "Nobody is being waited on." in markdown
    assert "Possible duplicates" not in markdown
    assert "last 8 weeks" in markdown
