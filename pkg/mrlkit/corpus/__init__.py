"""Raw documents -> normalised, token-aware chunks, deduplicated across all shards (stage ``prepare``, part 1).

Modules, in data-flow order: :mod:`sources` (find input files, fail fast when
absent), :mod:`readers` (parse each format, reject bad rows with file and line),
:mod:`normalize`, :mod:`chunking` (token-aware), :mod:`dedupe` (exact hash and
MinHash signatures per shard, one global pass on the driver), :mod:`shard` (the
Ray Data per-file function) and :mod:`pipeline` (the driver that runs them).
"""
