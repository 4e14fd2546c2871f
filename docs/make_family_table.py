"""Write docs/families.md, the model-family table, from `FAMILIES` in peftkit/families.py.

    python docs/make_family_table.py

`tests/test_families.py` fails when the page differs from what this writes.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's peftkit, not an installed one

from peftkit.families import family_table_markdown  # noqa: E402

if __name__ == "__main__":
    page = ROOT / "docs" / "families.md"
    page.write_text(family_table_markdown())
    print(f"wrote {page.relative_to(ROOT)}")
