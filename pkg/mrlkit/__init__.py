"""mrlkit: Matryoshka (MRL) fine-tuning of sentence-transformers embedding models on Ray.

Stages (see DESIGN.md): prepare -> train -> evaluate -> serve. Each reads and
writes storage URIs through :mod:`mrlkit.storage`, configured by one YAML file
loaded with :func:`mrlkit.config.load_config`.
"""

__version__ = "0.1.0"
