"""Pass or fail per numbered rule, as the kit prints it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Result:
    """One rule checked: ``rule`` is the section of spec/load-status.md."""

    rule: str
    text: str
    passed: bool
    detail: str = ""

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        tail = f"  ({self.detail})" if self.detail and not self.passed else ""
        return f"{verdict}  {self.rule:<8} {self.text}{tail}"


@dataclass
class Report:
    """The results of one run, printed as they come when ``echo`` is given."""

    role: str
    target: str
    echo: Callable[[str], None] | None = None
    results: list[Result] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def check(self, rule: str, text: str, passed: bool, detail: str = "") -> bool:
        result = Result(rule, text, bool(passed), detail)
        self.results.append(result)
        if self.echo is not None:
            self.echo(result.line())
        return result.passed

    @property
    def failed(self) -> list[Result]:
        return [r for r in self.results if not r.passed]

    @property
    def ok(self) -> bool:
        return bool(self.results) and not self.failed

    def failed_rules(self) -> set[str]:
        return {r.rule for r in self.failed}

    def summary(self) -> str:
        took = time.monotonic() - self.started
        passed = len(self.results) - len(self.failed)
        return (f"{self.role} {self.target}: {passed} passed, {len(self.failed)} failed "
                f"({took:.1f} s)")
