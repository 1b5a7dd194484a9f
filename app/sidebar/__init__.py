"""The sidebar beside every tab: 1 · Model (model.py) and 2 · Strategy (strategy.py), each module its panel's
layout, wiring and handlers."""
