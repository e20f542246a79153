"""MkDocs hooks (``hooks:`` in mkdocs.yml): fill each page's ``<!-- generated: NAME -->`` markers
from the code (``reference.py``) and publish the OpenAPI document beside the HTTP reference.

A generator that fails, or a marker no generator knows, fails the build."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

sys.path.insert(0, str(Path(__file__).resolve().parent))

import reference


def on_files(files: Files, config: Any) -> Files:
    files.append(File.generated(config, "reference/openapi.json", content=reference.openapi_json()))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    try:
        return reference.expand(markdown)
    except Exception as exc:
        raise PluginError(f"{page.file.src_uri}: {type(exc).__name__}: {exc}") from exc
