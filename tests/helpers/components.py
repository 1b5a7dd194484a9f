"""Stand-ins for the page's components, so page handlers can be called without building the page."""

from __future__ import annotations


class Names:
    """The page's ``ui`` with each component replaced by its own name: a handler's ``{component: value}`` then reads
    by widget name (``result["window"]``)."""

    def __getattr__(self, name: str) -> str:
        return name
