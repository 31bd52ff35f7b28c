"""Stage ``prepare`` as a Ray job: raw corpus -> chunks -> training pairs (see mrlkit.pairs.stage).

Submit it to a running Ray cluster (``make ray-start`` prints the address and token settings)::

    ray job submit --address http://127.0.0.1:8265 \
        --runtime-env-json '{"env_vars": {"HF_HUB_OFFLINE": "1"}}' \
        -- python ray_jobs/prepare.py --config ray_jobs/configs/demo.yaml

or run it locally on the embedded Ray: ``python ray_jobs/prepare.py --config ray_jobs/configs/demo.yaml``.
"""

import sys

from mrlkit.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["prepare", *sys.argv[1:]]))
