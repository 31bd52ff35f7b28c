"""``make demo``: the whole pipeline on an embedded Ray, on local storage or a local S3 server.

Runs the same stage classes a cluster runs (``mrlkit prepare|train|evaluate``),
in order, on a corpus every machine has offline: the Python standard library's
own documentation. Then prints the report table and how to serve the model::

    python -m mrlkit.demo --config ray_jobs/configs/demo.yaml [--storage s3] [section.key=value ...]
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from mrlkit import layout, storage
from mrlkit.cli import STAGES
from mrlkit.config import load_config
from mrlkit.errors import MrlkitError
from mrlkit.stage import configure_logging, run_stage

log = logging.getLogger("mrlkit.demo")
PIPELINE = ("prepare", "train", "evaluate")
DEMO_BUCKET = "mrlkit-demo"


def _banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def _start_local_s3(workdir: Path) -> Any:
    from mrlkit.testing.s3_server import LocalS3Server

    server = LocalS3Server("rclone", workdir / ".s3-data").start()
    server.create_bucket(DEMO_BUCKET)
    os.environ.update(server.env())  # before Ray starts, so its workers inherit the settings
    print(f"local S3 server (rclone, disk-backed) on {server.endpoint}, bucket s3://{DEMO_BUCKET}")
    return server


def _stage_class(name: str) -> Any:
    module, cls_name, _ = STAGES[name]
    try:
        return getattr(importlib.import_module(module), cls_name)
    except (ImportError, AttributeError):
        return None


def _ensure_corpus(cfg_input: str, local_dir: Path) -> None:
    """Export the stdlib docs once; upload them when the demo input is on S3."""
    from mrlkit.testing.stdlib_corpus import export_stdlib_docs

    if not (local_dir.is_dir() and any(local_dir.iterdir())):
        print(f"exporting the Python standard library's documentation to {local_dir} ...", flush=True)
        export_stdlib_docs(local_dir)
    if storage.is_s3_uri(cfg_input) and not storage.list_files(cfg_input):
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            storage.upload_file(path, storage.join(cfg_input, path.relative_to(local_dir).as_posix()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mrlkit.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="ray_jobs/configs/demo.yaml")
    parser.add_argument("--storage", choices=["local", "s3"], default="local")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = parser.parse_args(argv)
    configure_logging()
    started = time.monotonic()
    server = None
    try:
        overrides = list(args.overrides)
        raw_dir = Path("mrlkit-data/raw/stdlib-docs").resolve()
        if args.storage == "s3":
            server = _start_local_s3(Path.cwd())
            overrides = [f"storage.root=s3://{DEMO_BUCKET}/demo", f"corpus.input=s3://{DEMO_BUCKET}/raw/stdlib-docs",
                         *overrides]
        cfg = load_config(args.config, overrides)
        missing = [name for name in PIPELINE if _stage_class(name) is None]
        if missing:
            raise MrlkitError(f"stages not built yet: {', '.join(missing)}; nothing was run")
        if cfg.corpus.input and (storage.is_s3_uri(cfg.corpus.input) or not Path(cfg.corpus.input).exists()):
            local_dir = raw_dir if storage.is_s3_uri(cfg.corpus.input) else Path(cfg.corpus.input)
            _ensure_corpus(cfg.corpus.input, local_dir)
        from mrlkit.ray_runtime import init_ray

        init_ray(cfg.ray)
        summaries: dict[str, dict[str, Any]] = {}
        for i, name in enumerate(PIPELINE, 1):
            _banner(f"[{i}/{len(PIPELINE)}] {name}: {STAGES[name][2]}")
            summaries[name] = run_stage(_stage_class(name), cfg)
        _print_result(cfg, summaries, time.monotonic() - started, args)
        return 0
    except MrlkitError as exc:
        print(f"mrlkit demo: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if server is not None:
            server.stop()


def _print_result(cfg: Any, summaries: dict[str, dict[str, Any]], seconds: float, args: argparse.Namespace) -> None:
    evaluation = summaries["evaluate"]
    _banner(f"done in {seconds / 60:.1f} min")
    table = evaluation.get("table") or evaluation.get("report_md")
    if table:
        print(table)
    report = layout.report_uri(cfg)
    print(f"report: {storage.join(report, 'report.md')}")
    print(f"plot:   {storage.join(report, 'ndcg_by_dim.png')}")
    print(f"model:  {layout.model_uri(cfg)}")
    print("\nserve it (OpenAI-compatible /v1/embeddings, any trained dimension):")
    if args.storage == "s3":
        print("  make s3   # in another terminal: the same disk-backed store (.s3-data); export what it prints")
    print(f"  .venv/bin/mrlkit serve --config {args.config} storage.root={cfg.storage.root}")
    print(f"  curl -s http://{cfg.serve.host}:{cfg.serve.port}/v1/embeddings -H 'Content-Type: application/json' "
          f"-d '{{\"input\": \"how do I read a file?\", \"dimensions\": {cfg.train.matryoshka_dims[-2]}}}'")


if __name__ == "__main__":
    raise SystemExit(main())
