"""Stage ``train`` as a Ray job: MRL fine-tuning on Ray Train, checkpoints in the configured storage.

Submit it to a running cluster (the config's storage root must be reachable from every node)::

    ray job submit --working-dir . -- python ray_jobs/train.py --config ray_jobs/configs/demo.yaml \
        train.num_workers=2

Submitting again with the same ``run`` continues from the newest checkpoint. Exits 2 with one
``mrlkit: error:`` line on a problem the user can fix (bad config, unreachable storage, missing pairs).
"""

import sys

from mrlkit.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["train", *sys.argv[1:]]))
