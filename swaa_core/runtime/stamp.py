"""Content stamps of files and folders, for caches keyed by a path.

A cache that remembers what a path held (a loaded model folder, a merged LoRA adapter, a hashed .gguf file) must
notice when something else is written to the same path: an adapter saved again into its folder (``save_adapter``;
the CLI refuses it), a model saved over an old one. Hashing gigabytes of weights on every lookup is too slow, so the stamp is what the file system
says about every file under the path: its relative name, size, modification time (ns), inode and change time (ns).
Writing a file changes its change time whatever the writer does to the modification time, and ``save_pretrained``
replacing a file gives it a new inode, so a rewrite changes the stamp even when sizes stay the same.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["content_stamp", "path_stamp", "tokenizer_fingerprint", "weights_fingerprint"]


def content_stamp(path: str | os.PathLike) -> str:
    """A 16-hex-digit stamp of the file or folder (recursively) at ``path``; it changes when any file under it is
    added, removed, renamed or rewritten. Raises FileNotFoundError when ``path`` does not exist."""
    root = Path(path)
    if root.is_file():
        entries = [("", root.stat())]
    else:
        if not root.is_dir():
            raise FileNotFoundError(f"No such file or folder: {root}")
        entries = [(p.relative_to(root).as_posix(), p.stat()) for p in sorted(root.rglob("*")) if p.is_file()]
    digest = hashlib.sha1()
    for name, st in entries:
        digest.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0{st.st_ctime_ns}\n".encode())
    return digest.hexdigest()[:16]


def path_stamp(name: str | os.PathLike | None) -> str:
    """:func:`content_stamp` when ``name`` is an existing local path, else "" (a Hub id, an embedded model's name,
    nothing): the part of a cache key that tells two contents of one path apart."""
    if not name:
        return ""
    path = Path(name).expanduser()
    try:
        return content_stamp(path) if path.exists() else ""
    except OSError:  # unreadable or removed meanwhile: no stamp, the load itself reports the problem
        return ""


_CHUNK = 1 << 22  # elements per step of a checksum: bounds its int64 temporaries at 32 MiB (plus the position weights)


def weights_fingerprint(model) -> str:
    """A 16-hex-digit fingerprint of a model's weights: every parameter's and buffer's name, dtype, shape and exact
    bits (LoRA layers and loaded adapters included), for results keyed by the weights that produced them, whatever
    folder, Hub revision or in-place change they came from.

    A CPU tensor's bytes are hashed as they are; a tensor on an accelerator is summed there, its bits (int32 words,
    or bytes when its size is not a multiple of 4) in two integer sums, one weighted by position: exact and
    independent of summation order, so one model on one kind of device gets one fingerprint in any process (the device
    is part of a sweep's key anyway). Reads every weight once per state of the weights (:func:`weights_version`; kept
    on the model): about 0.5-0.9 s per GB on a CPU, milliseconds per GB on a GPU. Tensors on the meta device
    (offloaded) count by name, dtype and shape only."""
    import torch

    version = weights_version(model)
    cached = model.__dict__.get("_swaa_weights_fingerprint")
    if cached is not None and cached[0] == version:
        return cached[1]
    digest = hashlib.sha1()
    seen = set()
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor is None or name in seen:
            continue
        seen.add(name)
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        if tensor.device.type == "meta" or tensor.numel() == 0:
            continue
        flat = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
        if flat.device.type == "cpu":
            digest.update(memoryview(flat.numpy()))
            continue
        digest.update(f"{device_checksum(flat)}\n".encode())
    model.__dict__["_swaa_weights_fingerprint"] = (version, digest.hexdigest()[:16])
    return digest.hexdigest()[:16]


def weights_version(model) -> tuple:
    """Which tensors hold the weights and how often each was changed in place (its autograd version counter): equal
    while no weight is replaced or written, so a fingerprint is computed once per state of the weights. A write
    through ``tensor.data`` bypasses the counter and is not seen."""
    return tuple((name, t.data_ptr(), t._version) for name, t in [*model.named_parameters(), *model.named_buffers()]
                 if t is not None)  # fmt: skip


def device_checksum(data) -> tuple[int, int]:
    """Two exact integer sums of a flat uint8 tensor's bits, computed where it lives: the plain sum and one weighted
    by position (so swapped words differ), over int32 words when its size allows, else bytes."""
    import torch

    words = data.view(torch.int32) if data.numel() % 4 == 0 else data
    plain = weighted = torch.zeros((), dtype=torch.int64, device=words.device)
    for start in range(0, words.numel(), _CHUNK):
        chunk = words[start : start + _CHUNK].to(torch.int64)
        positions = torch.arange(start, start + chunk.numel(), device=chunk.device) % 65521 + 1
        plain = plain + chunk.sum()
        weighted = weighted + (chunk * positions).sum()  # int64 wraps: still exact, and order does not matter
    return int(plain), int(weighted)


def tokenizer_fingerprint(tokenizer) -> str:
    """A 16-hex-digit fingerprint of what a tokenizer does to text: its class, its full definition (a fast
    tokenizer's JSON; else its vocabulary), its special tokens and chat template. "" for None."""
    if tokenizer is None:
        return ""
    import json

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # without the padding and truncation state the last call left behind
        definition = json.dumps({k: v for k, v in json.loads(backend.to_str()).items()
                                 if k not in ("padding", "truncation")}, sort_keys=True)  # fmt: skip
    else:
        definition = json.dumps(sorted(tokenizer.get_vocab().items()))
    parts = [type(tokenizer).__name__, definition, json.dumps(getattr(tokenizer, "special_tokens_map", {}),
             sort_keys=True, default=str), str(getattr(tokenizer, "chat_template", None))]  # fmt: skip
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()[:16]
