"""HTTP filters: the interface (api), the chain that runs them, the built-in filters and the
loader of operators' own filters ([filter NAME] sections)."""

from proxyd.filters.api import (
    Answer,
    Exchange,
    Filter,
    Headers,
    OptionError,
    Options,
    Reject,
    Rejected,
    add_header,
    header,
    remove_header,
    set_header,
)

__all__ = [
    "Answer",
    "Exchange",
    "Filter",
    "Headers",
    "OptionError",
    "Options",
    "Reject",
    "Rejected",
    "add_header",
    "header",
    "remove_header",
    "set_header",
]
