"""The per-stack examples of the documentation's guides (docs/guides/*.md), as the tests that run
them read them: a ```python block whose first line is ``# example: NAME``. The README links to
these guides; the examples live, and are tested, in one place."""

from __future__ import annotations

import re
from pathlib import Path

GUIDES = Path(__file__).resolve().parents[1] / "docs" / "guides"


def example(name: str) -> str:
    found: dict[str, str] = {}
    for page in sorted(GUIDES.glob("*.md")):
        blocks = re.findall(r"```python\n(# example: (\w+)\n.*?)```", page.read_text(), re.DOTALL)
        for code, block_name in blocks:
            assert block_name not in found, f"two `# example: {block_name}` blocks in docs/guides"
            found[block_name] = code
    assert name in found, f"docs/guides has no `# example: {name}` block (has {sorted(found)})"
    return found[name]
