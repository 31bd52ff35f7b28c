"""Stage ``evaluate`` as a Ray job: every model at every Matryoshka dimension, report to storage.

Submit to a running cluster (the working dir carries the config; storage settings come from the
cluster's environment or Secret, never from this file)::

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python ray_jobs/evaluate.py --config ray_jobs/configs/demo.yaml evaluate.num_workers=4

Or run it locally, where it starts an embedded Ray when ``evaluate.num_workers > 1``::

    python ray_jobs/evaluate.py --config ray_jobs/configs/demo.yaml

Same as ``mrlkit evaluate``; see :mod:`mrlkit.evaluate.stage`.
"""

import sys

from mrlkit.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["evaluate", *sys.argv[1:]]))
