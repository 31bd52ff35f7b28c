"""``mrlkit <stage> --config FILE [section.key=value ...]``: every stage from one command.

Examples::

    mrlkit config --config ray_jobs/configs/demo.yaml train.epochs=1   # print the resolved config
    mrlkit prepare --config ray_jobs/configs/demo.yaml
    mrlkit train --config ray_jobs/configs/demo.yaml train.num_workers=2

Problems a user can fix (bad config, unreachable storage, missing input) print
one line starting with ``mrlkit: error:`` and exit with status 2; so does a full disk.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
import tempfile
from typing import Any

from mrlkit import __version__
from mrlkit.config import config_to_dict, load_config
from mrlkit.errors import NO_SPACE, MrlkitError, disk_full_error

# stage name -> (module, class, one-line help). Modules load only when their stage runs.
STAGES: dict[str, tuple[str, str, str]] = {
    "prepare": ("mrlkit.pairs.stage", "PrepareStage", "raw corpus -> chunks -> training pairs (Ray Data)"),
    "train": ("mrlkit.train.launch", "TrainStage", "MRL fine-tuning on Ray Train, checkpoints in storage"),
    "evaluate": ("mrlkit.evaluate.stage", "EvaluateStage", "every dimension, base vs fine-tuned; report + plot"),
    "serve": ("mrlkit.serve.local", "ServeStage", "OpenAI-compatible /v1/embeddings on Ray Serve"),
}


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", help="pipeline YAML (e.g. ray_jobs/configs/demo.yaml)")
    common.add_argument("overrides", nargs="*", metavar="section.key=value", help="override a config value")
    common.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    parser = argparse.ArgumentParser(prog="mrlkit", description="Matryoshka embedding fine-tuning on Ray.")
    parser.add_argument("--version", action="version", version=f"mrlkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    sub.add_parser("config", parents=[common], help="validate and print the resolved config as JSON")
    for name, (_, _, help_text) in STAGES.items():
        sub.add_parser(name, parents=[common], help=help_text)
    # add_help=False: `mrlkit k8s --help` is answered by the k8s command itself, with its own options.
    k8s = sub.add_parser("k8s", help="run stages on Kubernetes as KubeRay RayJobs", add_help=False)
    k8s.add_argument("k8s_args", nargs=argparse.REMAINDER, help="see `mrlkit k8s --help`")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["k8s"]:  # its own parser, so `mrlkit k8s --help` shows the k8s options
        from mrlkit.k8s.cli import main as k8s_main

        return k8s_main(argv[1:])
    args = _parser().parse_args(argv)
    from mrlkit.stage import configure_logging, run_stage

    try:
        configure_logging(args.verbose)
        cfg = load_config(args.config, args.overrides)
        if args.command == "config":
            print(json.dumps(config_to_dict(cfg), indent=2))
            return 0
        module, cls_name, _ = STAGES[args.command]
        stage_cls: Any = getattr(importlib.import_module(module), cls_name)
        summary = run_stage(stage_cls, cfg)
        table = summary.pop("table", None)  # markdown reads as a table, not as an escaped JSON string
        print(json.dumps(summary, indent=2, sort_keys=True, default=str))
        if table:
            print(table)
        return 0
    except MrlkitError as exc:
        print(f"mrlkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mrlkit: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        full = disk_full_error(exc)
        if full is None:
            raise  # a bug: keep the traceback
        print(f"mrlkit: error: {disk_full_message(full)}", file=sys.stderr)
        return 2


def disk_full_message(full: OSError) -> str:
    """One line: what filled, and how much room the scratch folder has now."""
    scratch = tempfile.gettempdir()
    where = f" writing {full.filename}" if full.filename else ""
    return (f"{NO_SPACE}{where}. Scratch files go under {scratch} (TMPDIR; "
            f"{shutil.disk_usage(scratch).free / 1e9:.1f} GB free now), outputs under storage.root: "
            "free some space or point TMPDIR at a larger disk")


if __name__ == "__main__":
    raise SystemExit(main())
