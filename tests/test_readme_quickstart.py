"How scripts/fresh_machine_check.sh reads the README: the two quick-start commands, the loss bound, a run's loss."
import importlib.util, subprocess, sys
from pathlib import Path
import pytest

root = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location('readme_quickstart', root/'scripts'/'readme_quickstart.py')
rq = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rq)

README = '''## Quick start
Then **the test command** runs every notebook:

```sh
pip install -e ".[dev]" && nbdev_test
```

**The main job** trains a small i3 in about 6 minutes and prints a final validation loss at most 3.45:

```sh
i3-train --preset demo && i3-generate --out runs/demo
```

## Next
```sh
echo not a quick-start command
```
'''

def test_commands_and_bound():
    assert rq.command(README, 'test') == 'pip install -e ".[dev]" && nbdev_test'
    assert rq.command(README, 'main') == 'i3-train --preset demo && i3-generate --out runs/demo'
    assert rq.max_val_loss(README) == 3.45
    assert rq.max_val_loss(README.replace('at most 3.45', '≤ 2.9')) == 2.9

def test_missing_main_job_fails_clearly(capsys):
    text = README.split('**The main job**')[0] + '**The main job** is added later. <!-- main-job: not yet available -->\n\n## Next\n'
    with pytest.raises(SystemExit) as e:
        rq.command(text, 'main')
    assert e.value.code == 2 and 'not yet available' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        rq.command(text.replace('**the test command**', 'the tests'), 'test')
    with pytest.raises(SystemExit):
        rq.max_val_loss(README.replace('at most 3.45', 'about 3.4'))

@pytest.mark.parametrize('log,loss', [
    ('step 10 | val loss 4.3\nfinal validation loss 3.1234 (perplexity 22.8) at step 600\nstep 700 | val loss 2.0\n', 3.1234),
    ('step 10 | val loss: 4.3\nstep 20 | val_loss=3.95\n', 3.95),
])
def test_parse_loss(log, loss):
    assert rq.parse_loss(log) == loss

def test_parse_loss_needs_a_number_right_after_the_words():
    with pytest.raises(SystemExit):
        rq.parse_loss('validation loss at step 100: 3.2\n')

def test_the_readme_gives_the_test_command():
    r = subprocess.run([sys.executable, str(root/'scripts'/'readme_quickstart.py'), str(root/'README.md'), 'test'],
                       capture_output=True, text=True)
    assert r.returncode == 0 and 'nbdev_test' in r.stdout, r.stderr
