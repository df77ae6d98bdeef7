"""Write README.md from nbs/index.ipynb (nbdev_readme needs quarto, which is not installable here).
Usage: python scripts/make_readme.py [--check]   (--check exits 1 when README.md is stale)."""
import re, sys
from pathlib import Path
import nbformat
from nbconvert import MarkdownExporter

root = Path(__file__).resolve().parent.parent

def render() -> str:
    "Markdown of the index notebook: `# Title` + `> promise` become the README header; hidden cells are dropped."
    nb = nbformat.read(root/'nbs'/'index.ipynb', as_version=4)
    nb.cells = [c for c in nb.cells if not (c.cell_type == 'code' and c.source.lstrip().startswith(('#| hide', '#|hide')))]
    for c in nb.cells:  # nbdev directives are for nbdev, not readers
        if c.cell_type == 'code': c.source = re.sub(r'^#\|.*\n?', '', c.source, flags=re.M)
    body, _ = MarkdownExporter(exclude_input_prompt=True, exclude_output_prompt=True).from_notebook_node(nb)
    body = re.sub(r'\n{3,}', '\n\n', body).strip() + '\n'
    return "<!-- Generated from nbs/index.ipynb by scripts/make_readme.py: edit the notebook, not this file. -->\n\n" + body

if __name__ == '__main__':
    text, readme = render(), root/'README.md'
    if '--check' in sys.argv:
        if not readme.exists() or readme.read_text(encoding='utf-8') != text:
            sys.exit('README.md is stale: run `python scripts/make_readme.py` and commit the result.')
        print('README.md is current.')
    else:
        readme.write_text(text, encoding='utf-8'); print('wrote', readme)
