"""The tiny offline default: a Vietnamese BPE tokenizer and a small BLOOM base trained from scratch
on bundled prose, the ``tiny-chat`` / ``tiny-doctor`` adapters trained on it with ``vichat train``,
and their held-out evaluation. docs/tiny.md describes it.

Modules: :mod:`.build` (settings, cache, the build), :mod:`.stages` (one function per stage),
:mod:`.pretrain` (corpus and from-scratch loop), :mod:`.parts` (the disjoint data parts),
:mod:`.heldout` (the held-out evaluation), :mod:`.commands` (``vichat tiny``).
"""
