"""A griffe extension (mkdocs.yml, mkdocstrings' ``extensions``): the package's docstrings are
written for Sphinx-style readers (``:func:`x```, ``~`` shortcuts, ``::`` literal blocks); this
turns those few reST forms into Markdown so the Python API reference reads cleanly."""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:func|data|class|mod|meth|attr|exc|obj):`~?([^`]+)`")
LITERAL = re.compile(r"::\n\n((?:(?:[ \t]+.*)?\n)+)")


def markdown(text: str) -> str:
    text = ROLE.sub(lambda m: f"`{m.group(1)}`", text)
    text = re.sub(r"``([^`]+)``", r"`\1`", text)

    def block(match: re.Match[str]) -> str:
        body = match.group(1).rstrip("\n")
        lines = body.splitlines()
        indent = min(len(x) - len(x.lstrip()) for x in lines if x.strip())
        code = "\n".join(x[indent:] for x in lines)
        return f":\n\n```python\n{code}\n```\n\n"

    return LITERAL.sub(block, text + "\n").rstrip("\n")


class RstToMarkdown(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
