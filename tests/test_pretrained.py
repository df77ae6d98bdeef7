"""Published artifacts (i3_edu.pretrained): every layout the reference writes, the hub with and without a network,
the model card, and uploads. The hub is never reached: folders and the Hugging Face cache are built by the tests in
the exact published layouts, and a local server that never answers stands in for a hung hub."""
import json, os, socket, subprocess, sys, threading, time
from pathlib import Path
import pytest
import torch
import i3_reference_model as ref_lib
from i3_edu.core import set_seed, HubUnavailableError
from i3_edu.demo import demo_corpus
from i3_edu.model import i3Config, i3Model
from i3_edu.pretrained import (config_json, save_pretrained, load_pretrained, from_pretrained, push_to_hub,
                               MODEL_FILES)
from i3_edu.tokenizer import ChunkTokenizer

pytestmark = pytest.mark.usefixtures('one_thread')

@pytest.fixture(scope='module')
def tok():
    return ChunkTokenizer.build(demo_corpus(scale=0.01)['stories'], progress=False)

def reference_folder(folder:Path, tok, layout:str) -> ref_lib.i3Model:
    "A folder as the reference code writes it: hard-coded config values, the model card's vocabulary name."
    cfg = i3Config.preset('tiny', tokenizer=tok)
    set_seed(0)
    r = ref_lib.i3Model(cfg.vocab_size, cfg.d_model, cfg.n_heads, cfg.max_seq_len, cfg.d_state, cfg.n_hybrid, cfg.n_attn)
    conf = {k: v for k, v in config_json(cfg).items() if k != 'i3_edu'}
    conf['d_state'] = 64                                       # the reference writes 64 whatever the model has
    folder.mkdir(parents=True, exist_ok=True)
    if layout == 'best':                                       # {'model_state_dict': ..., 'config': ...}, no config.json
        torch.save({'model_state_dict': r.state_dict(), 'config': conf}, folder/'pytorch_model_best.bin')
    else:
        torch.save(r.state_dict(), folder/'pytorch_model.bin')
        (folder/'config.json').write_text(json.dumps(conf))
    tok.save(folder/'chunk_vocab_combined.json')
    return r

@pytest.mark.filterwarnings('ignore:config.json says', 'ignore:n_heads=')
@pytest.mark.parametrize('layout', ['bin', 'best'])
def test_every_reference_layout_loads_with_the_reference_logits(tmp_path, tok, layout):
    r = reference_folder(tmp_path, tok, layout)
    m, tok2 = from_pretrained(tmp_path)
    idx = torch.tensor([tok.encode('once upon a time there was a cat')])
    with torch.no_grad():
        assert torch.allclose(m(idx)[0], r(idx)[0], atol=1e-5)
    assert tok2.fingerprint == tok.fingerprint and m.cfg.d_state == 8

def test_a_config_that_disagrees_with_the_weights(tmp_path, tok):
    reference_folder(tmp_path, tok, 'bin')
    conf = json.loads((tmp_path/'config.json').read_text())
    conf.update(conv_layers=10, attn_layers=6, n_layers=16)     # the reference's hard-coded layer counts
    (tmp_path/'config.json').write_text(json.dumps(conf))
    with pytest.warns(UserWarning) as w:
        m, _ = load_pretrained(tmp_path)
    said = ' | '.join(str(x.message) for x in w)
    assert 'n_hybrid=10 but the weights have n_hybrid=2' in said and 'd_state=64' in said
    assert 'n_heads=4 comes from config.json only' in said
    assert (m.cfg.n_hybrid, m.cfg.n_attn, m.cfg.d_state) == (2, 1, 8)

def fill_hub_cache(cache:Path, repo_id:str, folder_writer):
    "The Hugging Face cache after a download of `repo_id`: models--owner--name/{refs/main, snapshots/<commit>/...}."
    root = cache/('models--' + repo_id.replace('/', '--'))
    snap = root/'snapshots'/('1' * 40)
    folder_writer(snap)
    (root/'refs').mkdir(parents=True)
    (root/'refs'/'main').write_text('1' * 40)

def test_a_hub_model_offline_loads_from_the_cache_or_fails_at_once(tmp_path, tok, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    t0 = time.time()
    with pytest.raises(HubUnavailableError, match="'FlameF0X/i3-80m'.*HF_HUB_OFFLINE is set.*path/to/folder"):
        from_pretrained('FlameF0X/i3-80m', cache_dir=tmp_path/'hub')
    assert time.time() - t0 < 3
    with pytest.warns(UserWarning):
        fill_hub_cache(tmp_path/'hub', 'FlameF0X/i3-80m', lambda d: reference_folder(d, tok, 'bin'))
        m, _ = from_pretrained('FlameF0X/i3-80m', cache_dir=tmp_path/'hub')
    assert m.cfg.vocab_size == tok.vocab_size

def test_a_hub_that_never_answers_fails_in_bounded_time(tmp_path):
    server = socket.socket()
    server.bind(('127.0.0.1', 0))
    server.listen(16)
    held = []
    threading.Thread(target=lambda: [held.append(server.accept()) for _ in range(16)], daemon=True).start()
    env = dict(os.environ, HF_ENDPOINT=f'http://127.0.0.1:{server.getsockname()[1]}', HF_HUB_CACHE=str(tmp_path))
    for v in ('HF_HUB_OFFLINE', 'HF_DATASETS_OFFLINE', 'HTTPS_PROXY', 'https_proxy'):
        env.pop(v, None)
    code = "from i3_edu.pretrained import download\ndownload('owner/name', timeout=2)"
    t0 = time.time()
    p = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=120)
    took = time.time() - t0
    assert p.returncode != 0 and "cannot download the model 'owner/name'" in p.stderr, p.stderr[-1500:]
    assert took < 30, took                                      # was minutes without the time limit
    server.close()

@pytest.mark.parametrize('url, expect', [('http://proxy.example:3128', ('proxy.example', 3128))])
def test_the_reachability_check_goes_through_a_proxy(monkeypatch, url, expect):
    from i3_edu.core import hub_endpoint
    monkeypatch.delenv('HF_ENDPOINT', raising=False)
    monkeypatch.setenv('HTTPS_PROXY', url)
    assert hub_endpoint() == expect
    monkeypatch.delenv('HTTPS_PROXY')
    assert hub_endpoint() == ('huggingface.co', 443)

def test_save_writes_safetensors_a_card_and_the_fingerprint(tmp_path, tok):
    m = i3Model(i3Config.preset('tiny', tokenizer=tok))
    run = dict(preset='tiny', train=dict(steps=8, batch_size=4, seq_len=16, lr=3e-3), val_loss=2.5)
    save_pretrained(m, tok, tmp_path, dataset_sources=['tinystories', 'tinychat', 'demo'], run=run)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ['README.md', 'config.json', 'model.safetensors', 'pytorch_model.bin', 'tokenizer.json']
    card = (tmp_path/'README.md').read_text()
    for words in ('roneneldan/TinyStories | CDLA-Sharing-1.0', 'starhopp3r/TinyChat | CC-BY-NC-4.0', 'demo corpus',
                  f'{sum(p.numel() for p in m.parameters()):,} parameters', 'final validation loss 2.5000',
                  'steps 8', "from_pretrained('this folder or hub id')"):
        assert words in card, words
    assert json.loads((tmp_path/'config.json').read_text())['i3_edu']['tokenizer'] == tok.fingerprint

class FakeApi:
    "Stands in for huggingface_hub.HfApi: records the calls an upload makes."
    calls = []
    def __init__(self, token=None): FakeApi.calls.append(('init', token))
    def create_repo(self, repo_id, private=False, exist_ok=False): FakeApi.calls.append(('create', repo_id, private))
    def upload_folder(self, folder_path, repo_id, allow_patterns, commit_message):
        FakeApi.calls.append(('upload', folder_path, repo_id, tuple(allow_patterns)))
        return 'commit-url'

def test_push_to_hub_checks_the_folder_then_uploads(tmp_path, tok, monkeypatch):
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, 'HfApi', FakeApi)
    FakeApi.calls = []
    (tmp_path/'broken').mkdir()
    with pytest.raises(FileNotFoundError):
        push_to_hub(tmp_path/'broken', 'me/i3-tiny')
    assert FakeApi.calls == []                                   # nothing was created for a folder that does not load
    save_pretrained(i3Model(i3Config.preset('tiny', tokenizer=tok)), tok, tmp_path/'ok')
    assert push_to_hub(tmp_path/'ok', 'me/i3-tiny', private=True, token='t') == 'commit-url'
    assert FakeApi.calls == [('init', 't'), ('create', 'me/i3-tiny', True),
                             ('upload', str(tmp_path/'ok'), 'me/i3-tiny', tuple(MODEL_FILES))]

def test_generate_as_a_method(tok):
    m = i3Model(i3Config.preset('tiny', tokenizer=tok))
    idx = torch.tensor([tok.encode('once')])
    assert torch.equal(m.generate(idx, 4, top_k=1), m.generate(idx, 4, temperature=0))
