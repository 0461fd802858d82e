"""Rewrite README.md's settings table from shared/config.py (the single source of truth)."""
import pathlib
import re
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from shared.config import settings_table  # noqa: E402

readme = pathlib.Path(__file__).resolve().parents[1] / "README.md"
text = readme.read_text()
new = re.sub(r"\| setting \| default \| meaning \|\n(\|.*\|\n)+", lambda m: settings_table() + "\n", text, count=1)
readme.write_text(new)
