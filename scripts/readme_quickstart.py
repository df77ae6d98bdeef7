"""Read the quick-start commands out of README.md, for scripts/fresh_machine_check.sh.

    python scripts/readme_quickstart.py README.md test|main|max_val_loss
    python scripts/readme_quickstart.py --parse-loss LOGFILE

README convention (what the extraction looks for):
- the test command: the first ```sh block after the text containing "**the test command**", before the next heading;
- the main job: the first ```sh block after the text containing "**the main job**" (or an HTML comment
  `<!-- main-job -->`), before the next heading; the same section states the expected result as
  "final validation loss at most X" (also accepted: "<= X", "≤ X", "below X", "under X", "no worse than X").
A missing command or bound exits with status 2 and says what was looked for.
`--parse-loss` prints the last validation loss a run printed (a line with 'final' wins), exit 2 if none."""
import re, sys
from pathlib import Path

MARKERS = {'test': [r'\*\*the test command\*\*', r'<!--\s*quick-start:\s*test\s*-->'],
           'main': [r'\*\*the main job\*\*', r'<!--\s*main-job\s*-->']}
LABELS = {'test': ['**the test command**', '<!-- quick-start: test -->'], 'main': ['**the main job**', '<!-- main-job -->']}
FENCE = re.compile(r'^```(?:sh|bash|shell|console)\s*\n(.*?)^```\s*$', re.M | re.S)
HEADING = re.compile(r'^#{1,6} ', re.M)
BOUND = re.compile(r'validation loss\b[^.\n]{0,80}?(?:at most|<=|≤|below|under|no worse than|no higher than)\s*'
                   r'`?([0-9]+(?:\.[0-9]+)?)', re.I)

def section(text: str, what: str) -> tuple[str, str]:
    "(text from the marker to the next heading, the marker's name) or raise SystemExit(2)."
    for pat in MARKERS[what]:
        m = re.search(pat, text, re.I)
        if m:
            rest = text[m.start():]
            h = HEADING.search(rest)
            return (rest[:h.start()] if h else rest), m.group(0)
    sys.stderr.write(f"README.md has no {what} marker (looked for {' or '.join(LABELS[what])})\n")
    sys.exit(2)

def command(text: str, what: str) -> str:
    body, pat = section(text, what)
    m = FENCE.search(body)
    if not m:
        hint = ' (it says: ' + '; '.join(re.findall(r'<!--.*?-->', body)) + ')' if '<!--' in body else ''
        sys.stderr.write(f"README.md: no ```sh block after {pat} before the next heading{hint}\n")
        sys.exit(2)
    return m.group(1).strip()

def max_val_loss(text: str) -> float:
    body, _ = section(text, 'main')
    m = BOUND.search(body)
    if not m:
        sys.stderr.write("README.md: the main-job section states no bound such as 'final validation loss at most 3.2'\n")
        sys.exit(2)
    return float(m.group(1))

LOSS = re.compile(r'\bval(?:idation)?[ _-]?loss\b\s*[:=]?\s*([0-9]+(?:\.[0-9]+)?)', re.I)

def parse_loss(log: str) -> float:
    "The last validation loss in a log; a line mentioning 'final' takes precedence."
    lines = [l for l in log.splitlines() if LOSS.search(l)]
    if not lines:
        sys.stderr.write('the main job printed no validation loss (no "val loss" / "validation loss" line)\n')
        sys.exit(2)
    final = [l for l in lines if re.search(r'\bfinal\b', l, re.I)]
    return float(LOSS.findall((final or lines)[-1])[-1])

if __name__ == '__main__':
    if sys.argv[1] == '--parse-loss':
        print(parse_loss(Path(sys.argv[2]).read_text(errors='replace')))
        sys.exit(0)
    text, what = Path(sys.argv[1]).read_text(encoding='utf-8'), sys.argv[2]
    print(max_val_loss(text) if what == 'max_val_loss' else command(text, what))
