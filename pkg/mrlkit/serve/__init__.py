"""Stage ``serve``: OpenAI-compatible ``/v1/embeddings`` on Ray Serve with per-request Matryoshka dimensions.

``embedder`` (model, truncation; no Ray), ``schemas`` (wire format), ``metrics``,
``app`` (Ray Serve deployment and ``build_app``), ``local`` (``mrlkit serve``).
"""
