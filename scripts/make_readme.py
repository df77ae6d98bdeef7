"""Write README.md from nbs/index.ipynb (nbdev_readme needs quarto, which is not installable here).
Usage: python scripts/make_readme.py [--check]   (--check exits 1 when README.md is stale)."""
import re, sys
from pathlib import Path
import nbformat

root = Path(__file__).resolve().parent.parent

def _outputs(cell) -> str:
    "Text outputs of a code cell as an indented block (images stay in the notebook)."
    out = []
    for o in cell.get('outputs', []):
        if o.output_type == 'stream':
            out.append(o.text)
        elif 'text/markdown' in o.get('data', {}):
            out.append(o.data['text/markdown'])
        elif 'text/plain' in o.get('data', {}):
            out.append(o.data['text/plain'])
    return ''.join(out).rstrip()

def render() -> str:
    "Markdown of the index notebook: markdown cells as they are, code cells (minus nbdev directives) with text output."
    nb = nbformat.read(root/'nbs'/'index.ipynb', as_version=4)
    parts = []
    for c in nb.cells:
        src = c.source.strip()
        if c.cell_type == 'markdown':
            parts.append(src)
        elif c.cell_type == 'code' and not src.startswith(('#| hide', '#|hide')):
            code = re.sub(r'^#\|.*\n?', '', src, flags=re.M).strip()
            if code:
                parts.append(f"```python\n{code}\n```")
            if out := _outputs(c):
                parts.append(f"```\n{out}\n```")
    body = '\n\n'.join(p for p in parts if p) + '\n'
    return "<!-- Generated from nbs/index.ipynb by scripts/make_readme.py: edit the notebook, not this file. -->\n\n" + body

if __name__ == '__main__':
    text, readme = render(), root/'README.md'
    if '--check' in sys.argv:
        if not readme.exists() or readme.read_text(encoding='utf-8') != text:
            sys.exit('README.md is stale: run `python scripts/make_readme.py` and commit the result.')
        print('README.md is current.')
    else:
        readme.write_text(text, encoding='utf-8')
        print('wrote', readme)
