"Project-level checks: the package imports, the README is current, the nbdev config is what the guide says."
import configparser, subprocess, sys
from pathlib import Path
import i3_edu

root = Path(__file__).resolve().parent.parent

def test_version_matches_settings():
    cfg = configparser.ConfigParser(); cfg.read(root/'settings.ini')
    assert i3_edu.__version__ == cfg['DEFAULT']['version']

def test_tst_flags_gate_slow_and_gpu_cells():
    cfg = configparser.ConfigParser(); cfg.read(root/'settings.ini')
    assert {'slow', 'gpu'} <= set(cfg['DEFAULT']['tst_flags'].split())

def test_readme_is_generated_from_index():
    r = subprocess.run([sys.executable, str(root/'scripts'/'make_readme.py'), '--check'], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
