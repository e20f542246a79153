"""The README's per-stack examples, as the tests that run them read them: a ```python block whose
first line is ``# example: NAME``."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def example(name: str) -> str:
    blocks = re.findall(r"```python\n(# example: (\w+)\n.*?)```", README.read_text(), re.DOTALL)
    found = {block_name: code for code, block_name in blocks}
    assert name in found, f"README has no `# example: {name}` block (has {sorted(found)})"
    return found[name]
