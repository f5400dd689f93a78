"""What a chaos scenario found: its outcome (passed or not, with its figures), and the
suite's verdict over them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Outcome:
    name: str
    passed: bool
    figures: dict = field(default_factory=dict)

    def format(self) -> str:
        shown = ", ".join(f"{k} {v}" for k, v in self.figures.items())
        return f"{'PASS' if self.passed else 'FAIL'} {self.name}: {shown}"



def verdict(outcomes: list[Outcome]) -> str:
    passed = sum(o.passed for o in outcomes)
    return f"{passed} of {len(outcomes)} chaos scenarios passed"
