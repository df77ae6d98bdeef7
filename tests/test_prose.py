"""Numbers in a chapter's prose come from its outputs: a markdown cell that states a measured quantity (a number with
a unit of time, speed, ratio or share) must find that number in an output of the same notebook.

The rule the notebooks follow: a number that a cell measures reaches the prose only through that cell's output
(e.g. `display(Markdown(f'...'))`); a fixed fact is asserted by a cell beside it. This test holds the measured
half to it. Fixed quantities that carry such a unit (a threshold, a setting) are listed in ALLOWED with the reason."""
import json, re
from pathlib import Path
import pytest

NBS = Path(__file__).resolve().parents[1]/'nbs'
CHAPTERS = sorted(p for p in NBS.glob('[0-9]*.ipynb'))

NUM = r'(?<![\w.$^_{])(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)'
UNITS = {   # unit class -> the spellings of it, in prose and in printed output
    'x': r'x(?!\w)(?!\s*\d)',                    # a ratio, not a shape such as 4 x 256 '%': r'%', 'tok/s': r'(?:tok|tokens)/s', 'MB/s': r'MB/s',
    'us': r'(?:us|µs|microseconds?)(?![\w/])', 'ms': r'(?:ms|milliseconds?)(?![\w/])',
    's': r'(?:s|sec|seconds?)(?![\w/])', 'min': r'(?:min|minutes?)(?![\w/])', 'h': r'(?:h|hours?)(?![\w/])',
}
MEASURED = re.compile(NUM + r'\s?(' + '|'.join(f'(?P<u{i}>{u})' for i, u in enumerate(UNITS.values())) + ')')

# (notebook stem, the number as written, why it is not a measurement)
ALLOWED = {
    ('08_train_i3', '1'): "1% of an input's weight: the threshold that defines memory_length (eps=0.01)",
    ('10_explorers', '1'): "1% of an input's weight: the threshold that defines memory_length (eps=0.01)",
}

def strip_code(md: str) -> str:
    "Markdown without code spans, fenced blocks and math (numbers there are code or symbols, not claims)."
    md = re.sub(r'```.*?```', ' ', md, flags=re.S)
    md = re.sub(r'`[^`]*`', ' ', md)
    md = re.sub(r'\$\$.*?\$\$', ' ', md, flags=re.S)
    return re.sub(r'\$[^$]*\$', ' ', md)

def claims(nb: dict) -> list[tuple[int, str, str, str]]:
    "(cell index, number, unit class, the sentence around it) for every measured-looking quantity in the markdown."
    out = []
    for i, c in enumerate(nb['cells']):
        if c['cell_type'] != 'markdown':
            continue
        text = strip_code(''.join(c['source']))
        for m in MEASURED.finditer(text):
            name = next(k for k, v in m.groupdict().items() if v is not None)   # the group u<i> that matched
            unit = list(UNITS)[int(name[1:])]
            out.append((i, m.group(1), unit, text[max(0, m.start() - 60):m.end() + 20].replace('\n', ' ')))
    return out

def output_text(nb: dict) -> str:
    "Everything the notebook's code cells printed or displayed as text."
    parts = []
    for c in nb['cells']:
        for o in c.get('outputs', []):
            parts.append(''.join(o.get('text', '')))
            for mime in ('text/plain', 'text/markdown', 'text/html', 'text/latex'):
                parts.append(''.join(o.get('data', {}).get(mime, '')))
    return '\n'.join(parts)

def unsupported(path: Path) -> list[str]:
    nb = json.loads(path.read_text(encoding='utf-8'))
    outs = output_text(nb)
    bad = []
    for i, num, unit, ctx in claims(nb):
        if (path.stem, num) in ALLOWED:
            continue
        if not re.search(r'(?<![\d.,])' + re.escape(num) + r'\s?' + UNITS[unit], outs):
            bad.append(f'{path.name} cell {i}: {num!r} in "...{ctx}..." is in no output of the notebook')
    return bad

@pytest.mark.parametrize('path', CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_measured_numbers_in_prose_come_from_outputs(path):
    bad = unsupported(path)
    assert not bad, 'numbers in prose that no output shows (print them from the cell that measures them):\n' + '\n'.join(bad)

def test_the_rule_catches_a_typed_number(tmp_path):
    "A notebook whose prose types '5.1x' while its output says 4.9x fails; printing it from the cell passes."
    cell = lambda kind, src, **kw: dict(cell_type=kind, source=src, metadata={}, **kw)
    out = lambda text: [dict(output_type='stream', name='stdout', text=text)]
    nb = dict(cells=[cell('code', 'print(ratio)', outputs=out('speedup 4.9x\n'), execution_count=1),
                     cell('markdown', 'The fast path is 5.1x faster, in 0.25 s; `timeit 3 s` is code; $T = 64 s$ is math.')],
              metadata={}, nbformat=4, nbformat_minor=5)
    p = tmp_path/'99_demo.ipynb'
    p.write_text(json.dumps(nb))
    assert [b.split(': ')[1].split(' in ')[0] for b in unsupported(p)] == ["'5.1'", "'0.25'"]
    nb['cells'][0]['outputs'] = out('speedup 5.1x in 0.25 s\n')
    p.write_text(json.dumps(nb))
    assert unsupported(p) == []
