"""Chunks -> (query, positive[, negatives]) training pairs and a leakage-free train/test split (stage ``prepare``).

Modules: :mod:`synthetic` (inverse cloze, title -> section; model-free), :mod:`llm`
(questions from an OpenAI-compatible endpoint), :mod:`qrels` (BEIR queries and
qrels), :mod:`split` (group and reference splits), :mod:`build` (one pass over the
chunk table), :mod:`negatives` (hard-negative mining), :mod:`writer` (parquet,
split.json, manifest) and :mod:`stage` (``PrepareStage``, the entry point).
"""
