"""Collecting what is wrong with a data file, so one exception lists every problem, one sentence each."""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_LISTED = 25  # past this a report says how many more there were: a broken file can have millions


class DataFormatError(ValueError):
    """A data file FedFleet refuses to use; `problems` holds one sentence per problem found."""

    def __init__(self, subject: str, problems: list[str] | tuple[str, ...]) -> None:
        self.subject = subject
        self.problems = tuple(problems)
        listed = "; ".join(self.problems)
        super().__init__(f"{subject}: {listed}")


@dataclass
class Problems:
    """A list of problems with a cap; `where` prefixes each (e.g. "test file")."""

    where: str = ""
    found: list[str] = field(default_factory=list)
    dropped: int = 0
    stopped: bool = False  # a scan gave up early: "more" is at least `dropped`

    def add(self, message: str) -> None:
        text = f"{self.where}: {message}" if self.where else message
        if len(self.found) < MAX_LISTED:
            self.found.append(text)
        else:
            self.dropped += 1

    def extend(self, other: Problems) -> None:
        for message in other.found:
            if len(self.found) < MAX_LISTED:
                self.found.append(message)
            else:
                self.dropped += 1
        self.dropped += other.dropped
        self.stopped = self.stopped or other.stopped

    def __bool__(self) -> bool:
        return bool(self.found)

    def full(self) -> bool:
        """True once no more problems would be listed: a scan can stop looking."""
        return len(self.found) >= MAX_LISTED

    def listing(self) -> list[str]:
        if self.stopped:
            return self.found + [f"(stopped looking after {len(self.found)} problems)"]
        return self.found + ([f"and {self.dropped} more problem(s)"] if self.dropped else [])

    def raise_if_any(self, subject: str) -> None:
        if self.found:
            raise DataFormatError(subject, self.listing())
