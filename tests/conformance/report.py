"""The check x version report, and the list of deviations a plugin is known to have.

Statuses: ``pass``; ``fail`` (a deviation nobody expected); ``deviation``
(an expected deviation, detected); ``undetected`` (an expected deviation
that did not show up: the plugin got fixed or the harness is broken);
``skip`` (not applicable); ``error`` (the harness itself failed).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tests.conformance.registry import CheckInfo, VersionProbe
from tests.conformance.settings import HarnessSettings

STATUSES = ("pass", "fail", "deviation", "undetected", "skip", "error")
CELL = {"pass": "pass", "fail": "FAIL", "deviation": "dev", "undetected": "UNDET", "skip": "-", "error": "ERROR"}


class DeviationsFileError(ValueError):
    """The deviations file names an unknown check or version, or lacks 'match'."""


@dataclass(frozen=True)
class ExpectedDeviation:
    """One known deviation: which check, at which versions, and text its failure must contain.

    An ``intermittent`` one (a race) may also pass; the others must show up.
    """

    check: str
    versions: tuple[str, ...] | None
    match: str
    why: str = ""
    intermittent: bool = False

    def covers(self, check_id: str, version: str) -> bool:
        return self.check in ("*", check_id) and (self.versions is None or version in self.versions)

    def explains(self, reason: str) -> bool:
        return self.match.lower() in reason.lower()


@dataclass(frozen=True)
class ExpectedDeviations:
    source: str | None = None
    entries: tuple[ExpectedDeviation, ...] = ()

    @classmethod
    def load(cls, path: str, known_checks: set[str], known_versions: tuple[str, ...]) -> ExpectedDeviations:
        """Read ``{"deviations": [{"check", "versions"?, "match", "why"?, "intermittent"?}, ...]}``.

        Unknown check ids or versions are an error: a typo must not silently
        turn an expected deviation into nothing.
        """
        with open(path, encoding="utf-8") as stream:
            document = json.load(stream)
        entries = []
        for index, raw in enumerate(document.get("deviations", [])):
            where = f"{path}: deviations[{index}]"
            if not isinstance(raw, dict) or not isinstance(raw.get("check"), str) or not raw.get("match"):
                raise DeviationsFileError(f"{where}: needs 'check' and a non-empty 'match'")
            if raw["check"] != "*" and raw["check"] not in known_checks:
                raise DeviationsFileError(f"{where}: unknown check {raw['check']!r}")
            versions = raw.get("versions")
            if versions is not None:
                unknown = [version for version in versions if version not in known_versions]
                if unknown:
                    raise DeviationsFileError(f"{where}: unknown versions {unknown}")
                versions = tuple(versions)
            entries.append(ExpectedDeviation(
                raw["check"], versions, raw["match"], raw.get("why", ""), bool(raw.get("intermittent", False))
            ))
        return cls(path, tuple(entries))

    def covering(self, check_id: str, version: str) -> list[ExpectedDeviation]:
        return [entry for entry in self.entries if entry.covers(check_id, version)]


@dataclass
class Outcome:
    status: str
    reason: str = ""
    expected: str = ""

    def as_json(self) -> dict[str, str]:
        document = {"status": self.status, "reason": self.reason}
        if self.expected:
            document["expected"] = self.expected
        return document


@dataclass
class ConformanceReport:
    settings: HarnessSettings
    checks: list[CheckInfo]
    deviations: ExpectedDeviations
    probe: VersionProbe | None = None
    outcomes: dict[tuple[str, str], Outcome] = field(default_factory=dict)

    def record(self, check_id: str, version: str, status: str, reason: str = "", expected: str = "") -> None:
        self.outcomes[(check_id, version)] = Outcome(status, reason, expected)

    def counts(self) -> Counter[str]:
        return Counter(outcome.status for outcome in self.outcomes.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "plugin": self.settings.plugin,
            "type": self.settings.plugin_type,
            "chained": self.settings.chained,
            "versions": list(self.settings.versions),
            "supportedVersions": list(self.probe.supported_versions)
            if self.probe and self.probe.supported_versions is not None
            else None,
            "expectedDeviations": self.deviations.source,
            "checks": [
                {
                    "id": info.check_id,
                    "section": info.section,
                    "title": info.title,
                    "results": {
                        version: self.outcomes[(info.check_id, version)].as_json()
                        for version in self.settings.versions
                        if (info.check_id, version) in self.outcomes
                    },
                }
                for info in self.checks
            ],
            "summary": {status: self.counts().get(status, 0) for status in STATUSES},
        }

    def write_json(self, path: str) -> None:
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        temporary = f"{path}.tmp"
        with open(temporary, "w", encoding="utf-8") as stream:
            json.dump(self.to_json(), stream, indent=2)
            stream.write("\n")
        os.replace(temporary, path)

    def render(self) -> list[str]:
        """The table, then one line per non-passing cell with its reason."""
        versions = self.settings.versions
        id_width = max([len(info.check_id) for info in self.checks] + [5])
        section_width = max([len(info.section) for info in self.checks] + [7])
        header = f"{'check':<{id_width}}  {'section':<{section_width}}  " + "  ".join(f"{v:>6}" for v in versions)
        lines = [header, "-" * len(header)]
        for info in self.checks:
            cells = []
            for version in versions:
                outcome = self.outcomes.get((info.check_id, version))
                cells.append(f"{CELL[outcome.status] if outcome else '?':>6}")
            lines.append(f"{info.check_id:<{id_width}}  {info.section:<{section_width}}  " + "  ".join(cells))
        counts = self.counts()
        lines.append("")
        lines.append(", ".join(f"{counts.get(status, 0)} {status}" for status in STATUSES))
        lines += self._grouped_reasons()
        return lines

    def _grouped_reasons(self) -> list[str]:
        """One line per distinct reason: a reason shared by many versions or checks is said once."""
        by_check: dict[tuple[str, str, str], list[str]] = {}
        for info in self.checks:
            for version in self.settings.versions:
                outcome = self.outcomes.get((info.check_id, version))
                if outcome and outcome.status not in ("pass", "skip"):
                    by_check.setdefault((outcome.status, outcome.reason, info.check_id), []).append(version)
        by_reason: dict[tuple[str, str, tuple[str, ...]], list[str]] = {}
        for (status, reason, check_id), versions in by_check.items():
            by_reason.setdefault((status, reason, tuple(versions)), []).append(check_id)
        lines = [""] if by_reason else []
        for (status, reason, versions), check_ids in by_reason.items():
            checks = check_ids[0] if len(check_ids) == 1 else f"{len(check_ids)} checks ({', '.join(check_ids)})"
            lines.append(f"{CELL[status]:>5} {checks} @{','.join(versions)}: {reason}")
        return lines
