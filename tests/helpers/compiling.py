"""What the CPU tests of SWAA's compiled paths share: a ``torch.compile`` backend that counts the graphs it gets."""

from __future__ import annotations


class CountingBackend:
    """A torch.compile backend that runs each graph as traced (no inductor) and counts the graphs."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward
