"""The offline engine: pocketsphinx with the US English model its wheel carries (the ``local`` extra).

It needs no account and no network, so the daemon can answer with it out of the box and fall back to it when a
cloud vendor is unreachable. Open dictation is rough; a grammar (a JSGF file or a list of phrases) makes fixed
commands reliable. See docs/vendors/local.md.
"""
