"""The page's tabs, in the order they are shown. Each module owns one tab: its layout (``layout(ui, defaults)``, which
keeps the tab's widgets on ``ui``), its events (``wire(ui, events)``) and their handlers; ``TITLE`` and ``ID`` name
it. Adding a tab is one module here and its line below."""

from . import advisor, capacity, compare, sweeps, tour, why

TABS = (compare, why, sweeps, capacity, advisor, tour)
