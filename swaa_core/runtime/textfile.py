"""Reading a user's text file (a prompt, a document) strictly: text comes back intact or the file is refused with a
message that names it and says why. Nothing is guessed: a binary file or a wrong encoding never becomes mojibake."""

from __future__ import annotations

import codecs
from pathlib import Path

from .units import format_bytes

MAX_TEXT_BYTES = 8 << 20  # 8 MiB, about 2M tokens: more text than any model here reads in one prompt

# Byte-order marks that name an encoding; UTF-32 before UTF-16 (a UTF-32-LE mark starts with the UTF-16-LE one).
_BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


class TextFileError(ValueError):
    """A file that cannot be used as text; the message names the file and the reason."""


def read_text_file(path: str | Path, *, what: str = "File", max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The text of ``path``: UTF-8 (a byte-order mark may name UTF-8, UTF-16 or UTF-32 instead).

    ``what`` starts the messages ("Prompt file", "Document"). Raises :class:`TextFileError` when the path is missing,
    a folder or unreadable, when it is larger than ``max_bytes``, empty, binary (NUL bytes without a UTF-16/32 mark)
    or not valid in its encoding; the message gives the byte offset of the first bad byte.
    """
    path = Path(path)
    if not path.exists():
        raise TextFileError(f"{what} not found: {path}")
    if path.is_dir():
        raise TextFileError(f"{what} {path} is a folder; give a text file.")
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise TextFileError(
                f"{what} {path} is {format_bytes(size, digits=1)}; the limit is {format_bytes(max_bytes, digits=1)} (about {max_bytes // 4:,} tokens, "
                "more than a model here reads). Use a shorter excerpt."
            )
        data = path.read_bytes()
    except OSError as e:
        raise TextFileError(f"{what} {path} cannot be read: {e.strerror or e}.") from None
    return decode_text(data, f"{what} {path}")


def decode_text(data: bytes, name: str) -> str:
    """``data`` decoded as :func:`read_text_file` does; ``name`` starts the error messages."""
    if not data.strip():
        raise TextFileError(f"{name} is empty.")
    encoding = next((enc for bom, enc in _BOMS if data.startswith(bom)), None)
    if encoding is None and b"\0" in data:
        at = data.index(b"\0")
        kind = _binary_kind(data)
        raise TextFileError(
            f"{name} is not a text file: it holds NUL bytes (the first at byte {at}){kind}. Give a plain-text "
            "file (.txt, UTF-8); for a PDF or Word document, save or copy its text first."
        )
    try:
        return data.decode(encoding or "utf-8")
    except UnicodeDecodeError as e:
        bad = data[e.start : e.start + 1].hex()
        raise TextFileError(
            f"{name} is not valid {encoding or 'UTF-8'} text: byte 0x{bad} at offset {e.start} cannot be decoded. "
            "Save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 in.txt > out.txt`) and try again."
        ) from None


def _binary_kind(data: bytes) -> str:
    signatures = {b"\x7fELF": "an executable", b"%PDF": "a PDF", b"PK\x03\x04": "a zip archive or Office document",
                  b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GGUF": "a GGUF model"}  # fmt: skip
    found = next((kind for sig, kind in signatures.items() if data.startswith(sig)), None)
    return f"; it looks like {found}" if found else ""
