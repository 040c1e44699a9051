"""The per-slice status ledger: state codes, which ledgers exist, and the variable names that hold them.

Each ledger is an int8 variable (0 = pending, 1 = done, 2 = failed) plus two string variables with the same
dims: what produced a done result (a settings/model key, so reruns can find stale work) and the error of a
failed one. Every cell is its own chunk, so processes updating different slices never share a chunk.
"""

from __future__ import annotations

from types import MappingProxyType

from storage.errors import ArchiveInputError

PENDING, DONE, FAILED = 0, 1, 2
STATE_CODES = MappingProxyType({"pending": PENDING, "done": DONE, "failed": FAILED})
STATE_NAMES = MappingProxyType({code: name for name, code in STATE_CODES.items()})

LEDGER_DIMS = MappingProxyType(
    {
        "ingest": ("slice",),
        "ingest_ld": ("dose", "slice"),
        "reconstruct": ("dose", "slice"),
    }
)


def state_code(state: str) -> int:
    """The int8 code of a state name; anything but pending/done/failed is an error."""
    try:
        return STATE_CODES[state]
    except (KeyError, TypeError):
        raise ArchiveInputError(f"unknown ledger state {state!r}: expected one of {sorted(STATE_CODES)}") from None


def check_ledger_name(name: str) -> tuple[str, ...]:
    """The dims of ledger `name`; an unknown name is an error listing the ledgers."""
    try:
        return LEDGER_DIMS[name]
    except (KeyError, TypeError):
        raise ArchiveInputError(f"unknown ledger {name!r}: expected one of {sorted(LEDGER_DIMS)}") from None


def status_variable(name: str) -> str:
    """Name of the int8 state variable of ledger `name`."""
    return f"status_{name}"


def produced_by_variable(name: str) -> str:
    """Name of the string variable recording what produced each done cell of ledger `name`."""
    return f"status_{name}_produced_by"


def error_variable(name: str) -> str:
    """Name of the string variable recording the error message of each failed cell of ledger `name`."""
    return f"status_{name}_error"


def slice_ranges(slices: list[int]) -> str:
    """Compact text of slice indices: [0, 1, 2, 5] -> '0-2,5' ('' when none)."""
    runs: list[list[int]] = []
    for index in sorted(set(slices)):
        if runs and index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    return ",".join(str(first) if first == last else f"{first}-{last}" for first, last in runs)


def fit_text(text: str, width: int) -> str:
    """`text` cut to `width` characters, with an ellipsis when it was longer."""
    return text if len(text) <= width else text[: width - 1] + "…"
