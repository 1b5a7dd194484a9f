"""A transformers streamer that keeps what generation hands it, for tests that compare streams."""

from __future__ import annotations

from transformers.generation.streamers import BaseStreamer


class Collect(BaseStreamer):
    """``tokens``: one list per ``put`` (the prompt first, then each generated token); ``ended`` after ``end()``."""

    def __init__(self):
        self.tokens, self.ended = [], False

    def put(self, value):
        self.tokens.append(value.reshape(-1).tolist())

    def end(self):
        self.ended = True
