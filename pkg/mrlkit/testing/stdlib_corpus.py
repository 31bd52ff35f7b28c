"""An offline corpus available on any machine: the Python standard library's own documentation.

One Markdown file per module and per public class (``# heading`` first, then the
pydoc text), so ``make demo`` and tests have real, varied prose and code without a
download. Sizes are capped per file so the demo stays at a few thousand chunks.

    python -m mrlkit.testing.stdlib_corpus ./mrlkit-data/raw/stdlib-docs [--max-modules 40]
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import pydoc
import re
import sys
import warnings
from pathlib import Path

MODULES = (
    "abc", "argparse", "array", "asyncio", "base64", "bisect", "calendar", "collections", "concurrent.futures",
    "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "enum", "fnmatch", "fractions",
    "functools", "glob", "gzip", "hashlib", "heapq", "hmac", "html", "http.client", "inspect", "io", "ipaddress",
    "itertools", "json", "logging", "math", "mimetypes", "operator", "os", "pathlib", "pickle", "pprint", "queue",
    "random", "re", "sched", "secrets", "shlex", "shutil", "socket", "sqlite3", "statistics", "string", "struct",
    "subprocess", "tarfile", "tempfile", "textwrap", "threading", "time", "timeit", "tokenize", "traceback", "types",
    "typing", "unicodedata", "unittest", "urllib.parse", "uuid", "warnings", "weakref", "zipfile", "zlib",
)
MAX_CLASSES_PER_MODULE = 6
MAX_CHARS_PER_FILE = 12_000
_BLANKS = re.compile(r"\n{3,}")


def _render(obj: object) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = pydoc.plain(pydoc.render_doc(obj, title="%s", renderer=pydoc.plaintext))
    text = _BLANKS.sub("\n\n", text.replace("\r", ""))
    if len(text) > MAX_CHARS_PER_FILE:  # cut at a paragraph boundary
        cut = text.rfind("\n\n", 0, MAX_CHARS_PER_FILE)
        text = text[: cut if cut > 0 else MAX_CHARS_PER_FILE]
    return text.strip()


def export_stdlib_docs(out_dir: str | Path, max_modules: int | None = None) -> Path:
    """Write ``<module>.md`` and ``<module>.<Class>.md`` files under ``out_dir``; returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    modules = MODULES[:max_modules] if max_modules else MODULES
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError:  # a Python built without e.g. sqlite3: skip that module, the rest still works
            continue
        (out / f"{name}.md").write_text(f"# {name}\n\n{_render(module)}\n", encoding="utf-8")
        classes = sorted((n, c) for n, c in inspect.getmembers(module, inspect.isclass)
                         if c.__module__ == module.__name__ and not n.startswith("_"))
        for cls_name, cls in classes[:MAX_CLASSES_PER_MODULE]:
            (out / f"{name}.{cls_name}.md").write_text(f"# {name}.{cls_name}\n\n{_render(cls)}\n", encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export the stdlib docs as Markdown files (an offline corpus).")
    parser.add_argument("out_dir")
    parser.add_argument("--max-modules", type=int, default=None)
    args = parser.parse_args(argv)
    out = export_stdlib_docs(args.out_dir, args.max_modules)
    files = list(out.glob("*.md"))
    print(f"wrote {len(files)} files, {sum(f.stat().st_size for f in files) / 1e6:.1f} MB to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
