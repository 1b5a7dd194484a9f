"""How many tokens a run is timed over, and how many decode steps make a speed worth ranking: plain numbers that the
command line and the app read without importing the model stack (their meaning: :mod:`.latency`)."""

DEFAULT_TIMING_TOKENS = 32  # generated tokens every compared run is timed over (the first one included)
MIN_DECODE_TOKENS = 16  # fewer decode steps than this: the figure is noise, shown but never ranked
