"""Text from elsewhere (a server, an error message quoting one) made safe to print on a terminal.

A terminal obeys what it is sent: ESC and the C1 controls start sequences that move the
cursor, clear the screen, set the window title (OSC), rewrite the clipboard on some terminals
or hide text; CR and backspace overwrite what is on the line; bidirectional overrides reorder
what the reader sees. None of it may come from a server. Every terminal printer (send's and
the mic's segment lines, notes, the CLI's error line) passes server text through printable().
"""

from __future__ import annotations

__all__ = ["printable"]

# Format characters that only join or separate letters (Persian, Indic scripts, emoji
# sequences) and have no effect on a terminal: kept, so such text reads as it was written.
_JOINERS = frozenset("\u200c\u200d")  # zero-width non-joiner, zero-width joiner


def printable(text: str) -> str:
    """`text` with every control or format character replaced by a space.

    Kept: what str.isprintable() accepts (letters, marks, numbers, punctuation, symbols, the
    ASCII space) and the two joiners above. Replaced: C0 and C1 controls (ESC, CSI, OSC, BEL,
    CR, LF, TAB, DEL, ...), bidirectional and other format characters, line and paragraph
    separators, surrogates, private-use and unassigned code points. A space, not nothing, so
    that words a newline separated stay apart.
    """
    if text.isprintable():  # the common case: one C-level scan
        return text
    return "".join(c if c.isprintable() or c in _JOINERS else " " for c in text)
