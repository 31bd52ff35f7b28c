"""The driver side of ``mrlkit k8s submit``: run a stage on the config carried in the RayJob.

``python -m mrlkit.k8s.entrypoint <stage>`` is a RayJob's entrypoint. The
resolved pipeline config arrives in ``MRLKIT_PIPELINE_YAML`` (the job's
runtime environment; it holds no credentials); it is written to a private
temporary file and handed to ``mrlkit <stage> --config FILE``, so the stage
runs exactly as it does anywhere else.
"""

from __future__ import annotations

import os
import sys
import tempfile

from mrlkit.k8s.manifests import CONFIG_ENV, STAGES


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1 or argv[0] not in STAGES:
        print(f"usage: python -m mrlkit.k8s.entrypoint {{{','.join(STAGES)}}}", file=sys.stderr)
        return 2
    text = os.environ.get(CONFIG_ENV)
    if not text:
        print(f"mrlkit: error: {CONFIG_ENV} is not set; this entrypoint runs inside a RayJob built by "
              "`mrlkit k8s submit`", file=sys.stderr)
        return 2
    from mrlkit.cli import main as cli_main

    with tempfile.TemporaryDirectory(prefix="mrlkit-job-") as folder:
        path = os.path.join(folder, "pipeline.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return cli_main([argv[0], "--config", path])


if __name__ == "__main__":
    raise SystemExit(main())
