"""Fill the README's configuration table from noisysim.config.SCHEMA (run after changing it).

    python docs/render_readme.py
"""

from pathlib import Path

from noisysim.config import schema_markdown

readme = Path(__file__).resolve().parent.parent / "README.md"
text = readme.read_text()
start, end = "<!-- config-table -->", "<!-- /config-table -->"
table = f"{start}\n{schema_markdown()}\n{end}"
if start in text:
    head, rest = text.split(start, 1)
    text = head + table + rest.split(end, 1)[1]
else:
    text = text.replace("CONFIG_TABLE", table)
readme.write_text(text)
