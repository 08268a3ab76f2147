"""What a measurement row says about the llama.cpp that produced it: build, era, flags, and caution marks.

../shared/calibration/*.csv keep the llama.cpp build and the llama-bench flags in free-text `notes` (and sometimes
only in the `source`: a dated PR comment, a discussion thread). `engine_of_row` reads them with a few explicit
rules, in order, and says which rule decided (`EngineInfo.how`), so a row's era is never a silent guess:

1. a build number: "build 4426e298 (2824)" (llama-bench prints `build: HASH (NUMBER)`);
2. a build date in the notes: "build 8e672ef (2023-11-21)", "build dated 2024-11-12", "master at 2026-05";
3. a dated comment in the source: "pull/13324 (comment by X, 2025-05-08)";
4. the notebook snapshot date: "snapshot May 2024";
5. the thread: discussion #4167 pins build 8e672ef (2023-11-21) in its instructions; the scoreboards #10879,
   #15013 and #15021 were opened no earlier than 2024-11-20 / 2025-05-08 (GitHub numbers issues, PRs and
   discussions in one sequence: issue #10435 was opened 2024-11-20, PR #13324 was discussed on 2025-05-08), so
   their rows are at least that new.

A row none of these rules dates gets era None: it is predicted for gpumix's own era and reported as undated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from gpumix.estimate.eras import era_of_build, era_of_date

_MONTHS = {m: i + 1 for i, m in enumerate(
    ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october", "november",
     "december"))}  # fmt: skip
_BUILD_NUMBER = re.compile(r"\bbuild:?\s+[0-9a-f]{6,}\s*\((\d{3,6})\)", re.I)
_BUILD_DATE = re.compile(r"\bbuild\b[^;]{0,40}?\(?(?:dated\s+)?(20\d\d)-(\d\d)-(\d\d)", re.I)
_MASTER_AT = re.compile(r"\bmaster at (20\d\d)-(\d\d)", re.I)
_COMMENT_DATE = re.compile(r"comment by [^,()]+, (20\d\d)-(\d\d)-(\d\d)", re.I)
_SNAPSHOT = re.compile(r"\bsnapshot (" + "|".join(_MONTHS) + r") (20\d\d)", re.I)
# Threads whose rows are dated by the thread itself (see the module doc for why these dates).
THREAD_DATES: dict[str, tuple[date, str]] = {
    "discussions/4167": (date(2023, 11, 21), "discussion #4167 pins build 8e672ef (2023-11-21)"),
    "discussions/10879": (date(2024, 11, 20), "Vulkan scoreboard #10879 opened after 2024-11-20"),
    "discussions/15013": (date(2025, 5, 8), "CUDA scoreboard #15013 opened after 2025-05-08"),
    "discussions/15021": (date(2025, 5, 8), "ROCm scoreboard #15021 opened after 2025-05-08"),
}
_FA_ON = re.compile(r"(?:-fa\s*(?:1|on)\b|\bFA on\b|flash attention on\b|with flash attention)", re.I)
_FA_OFF = re.compile(r"(?:-fa\s*(?:0|off)\b|no[- ]flash[- ]attn|\bno-FA\b|flash attention off\b)", re.I)
_UBATCH = re.compile(r"(?:n_ubatch\s*=\s*|-ub\s+)(\d+)", re.I)
_CAUTION = re.compile(r"treat [^;]{0,40}with caution|anomalous", re.I)
LLAMA_BENCH_UBATCH = 512  # llama-bench's default -ub


@dataclass(frozen=True)
class EngineInfo:
    build: int | None  # llama.cpp release number (bNNNN) when the row gives it
    day: date | None  # build date (or the earliest it can be) when only that is known
    era: str | None  # gpumix.estimate.eras name; None = undated
    how: str  # which rule dated the row
    flash_attention: bool | None  # -fa as recorded; None = not stated
    ubatch: int  # -ub as recorded, else llama-bench's default
    caution: bool  # the notes flag the number as anomalous ("treat with caution")


def _date(year: str, month: str, day: str = "1") -> date:
    return date(int(year), int(month), int(day))


def _dated(notes: str, source: str) -> tuple[int | None, date | None, str]:
    if found := _BUILD_NUMBER.search(notes):
        return int(found[1]), None, f"build number {found[1]} in notes"
    if found := _BUILD_DATE.search(notes):
        return None, _date(found[1], found[2], found[3]), f"build date {found[1]}-{found[2]}-{found[3]} in notes"
    if found := _MASTER_AT.search(notes):
        return None, _date(found[1], found[2]), f"master at {found[1]}-{found[2]} in notes"
    if found := _COMMENT_DATE.search(source):
        return None, _date(found[1], found[2], found[3]), f"comment date {found[1]}-{found[2]}-{found[3]} in source"
    if found := _SNAPSHOT.search(notes):
        return None, date(int(found[2]), _MONTHS[found[1].lower()], 1), f"snapshot {found[1]} {found[2]} in notes"
    for thread, (day, why) in THREAD_DATES.items():
        if thread in source:
            return None, day, why
    return None, None, "undated: no build, date or dated thread"


def _flash_attention(notes: str) -> bool | None:
    if _FA_OFF.search(notes):
        return False
    if _FA_ON.search(notes):
        return True
    return None


def engine_of_row(notes: str, source: str) -> EngineInfo:
    """The llama.cpp build/era, flags and caution mark of one measurement row (its `notes` and `source`)."""
    build, day, how = _dated(notes, source)
    era = era_of_build(build) if build is not None else (era_of_date(day) if day is not None else None)
    ubatch = _UBATCH.search(notes)
    return EngineInfo(
        build=build, day=day, era=era, how=how, flash_attention=_flash_attention(notes),
        ubatch=int(ubatch[1]) if ubatch else LLAMA_BENCH_UBATCH, caution=bool(_CAUTION.search(notes)),
    )  # fmt: skip
