"""Stage ``evaluate``: encode once, score every Matryoshka dimension, write report.json / report.md / a plot."""
