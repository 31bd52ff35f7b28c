"""``mrlkit k8s submit <stage> --config FILE [section.key=value ...]``: a stage as a KubeRay RayJob.

Examples::

    # print the RayJob (no cluster needed)
    mrlkit k8s submit train --config ray_jobs/configs/demo.yaml storage.root=s3://mrlkit/mrl --dry-run
    # run it on the Helm chart's RayCluster "mrlkit" and follow it to the end
    mrlkit k8s submit train --config ray_jobs/configs/demo.yaml storage.root=s3://mrlkit/mrl \\
        --namespace mrl --cluster-selector mrlkit

The config is validated here, before anything is created. Exit status: 0 when
the Ray job succeeded, 1 when it failed, 2 for a problem to fix (bad config,
bad option, no cluster access).
"""

from __future__ import annotations

import argparse
import sys

from mrlkit.config import load_config
from mrlkit.errors import MrlkitError
from mrlkit.k8s.manifests import DEFAULT_IMAGE, STAGES, JobOptions, build_rayjob, dump_yaml


def _parser() -> argparse.ArgumentParser:
    # One flat parser (not subparsers) so overrides and options may be intermixed, as in `mrlkit <stage>`.
    submit = argparse.ArgumentParser(prog="mrlkit k8s", description="Run pipeline stages as KubeRay RayJobs.")
    submit.add_argument("command", choices=["submit"], help="submit: create a RayJob for a stage, follow it, "
                        "print its logs")
    submit.add_argument("stage", choices=STAGES, help="the stage to run")
    submit.add_argument("--config", "-c", required=True, help="pipeline YAML (the file every stage reads)")
    submit.add_argument("overrides", nargs="*", metavar="section.key=value", help="override a config value")
    submit.add_argument("--namespace", "-n", default="default", help="namespace of the RayJob (default: default)")
    submit.add_argument("--image", default=DEFAULT_IMAGE, help=f"image with mrlkit (default: {DEFAULT_IMAGE})")
    submit.add_argument("--cluster-selector", metavar="RAYCLUSTER",
                        help="run on this existing RayCluster (e.g. the chart's); default: a cluster of the job's own")
    submit.add_argument("--name", help="RayJob name (default: <run>-<stage>-<random>)")
    submit.add_argument("--auth-secret", help="Secret with the Ray token (key auth_token); default with "
                        "--cluster-selector: <cluster>-ray-auth, as the chart names it")
    submit.add_argument("--no-auth", action="store_true", help="the cluster does not use Ray token authentication")
    submit.add_argument("--storage-secret", help="own cluster only: Secret with the S3 keys (AWS_ACCESS_KEY_ID, ...)")
    submit.add_argument("--s3-endpoint", help="own cluster only: S3 endpoint URL (default: AWS)")
    submit.add_argument("--region", default="us-east-1", help="own cluster only: AWS_REGION (default: us-east-1)")
    submit.add_argument("--timeout", type=float, default=6 * 3600, help="seconds to follow the job (default: 6h)")
    submit.add_argument("--poll", type=float, default=5.0, help="seconds between status reads (default: 5)")
    submit.add_argument("--dry-run", action="store_true", help="print the RayJob manifest and exit")
    return submit


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    try:
        return _submit(args)
    except MrlkitError as exc:
        print(f"mrlkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mrlkit: interrupted (the RayJob keeps running)", file=sys.stderr)
        return 130


def _submit(args: argparse.Namespace) -> int:
    own_cluster_only = {"--storage-secret": args.storage_secret, "--s3-endpoint": args.s3_endpoint}
    if args.cluster_selector:
        given = [flag for flag, value in own_cluster_only.items() if value]
        if given:
            raise MrlkitError(f"{', '.join(given)} apply to a job's own cluster; with --cluster-selector the "
                              "selected cluster's pods already carry their storage settings")
    if args.no_auth and args.auth_secret:
        raise MrlkitError("--no-auth and --auth-secret contradict each other; give one")
    if args.timeout <= 0 or args.poll <= 0:
        raise MrlkitError("--timeout and --poll must be > 0 seconds")
    cfg = load_config(args.config, args.overrides)
    options = JobOptions(namespace=args.namespace, image=args.image, cluster_selector=args.cluster_selector,
                         name=args.name, auth=not args.no_auth, auth_secret=args.auth_secret,
                         storage_secret=args.storage_secret, s3_endpoint=args.s3_endpoint, region=args.region)
    manifest = build_rayjob(cfg, args.stage, options)
    if args.dry_run:
        print(dump_yaml(manifest), end="")
        return 0
    from mrlkit.k8s.submit import RayJobRunner, kube_apis

    custom, core = kube_apis()
    result = RayJobRunner(custom, core, poll_s=args.poll, timeout_s=args.timeout).run(manifest)
    return 0 if result.succeeded else 1


if __name__ == "__main__":
    raise SystemExit(main())
