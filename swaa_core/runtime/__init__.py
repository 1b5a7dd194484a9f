"""Process and input plumbing that knows nothing about attention, shared by the models, eval, train and cli layers.

Kept apart so that the layers above share one copy and the engine stays free of it; it imports nothing above it.
``distributed`` (one process per device under torchrun / accelerate launch: rank, share of the runs, barrier,
gather), ``textfile`` (reading a user's text file: UTF-8/BOM, binary, oversized or undecodable files refused by name),
``jsonl`` (the one JSON Lines reader and writer: run results, sweeps, distilled training records), ``units``
(byte counts for people) and ``lazy`` (package names imported on first use).
"""
