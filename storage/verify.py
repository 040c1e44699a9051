"""`need verify`: read every chunk of a catalog and report the ones that are missing, corrupt or fail their
checksum."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass
class VerifyReport:
    """What a verification found: chunks read, and one line per bad chunk."""

    chunks: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        return f"{len(self.problems)} bad chunks of {self.chunks}"

    def format(self) -> str:
        return "\n".join([*self.problems, self.summary()])


def verify_catalog(path: str | os.PathLike) -> VerifyReport:
    """Read every chunk of every study under `path` (a catalog, or one study group)."""
    raise NotImplementedError("need verify is being written (issue #17)")
