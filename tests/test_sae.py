"SAEs saved by SAELens itself (tests/fixtures/saelens, written by tools/make_saelens_fixtures.py) load here and compute what SAELens computed."
import json, shutil
import pytest, torch
from safetensors.torch import load_file
from llmlab.core import assert_close
from llmlab.sae import SAE_CFG, SAEError, load_sae, save_sae, saelens_cfg

FIXTURES = __import__('pathlib').Path(__file__).parent / 'fixtures' / 'saelens'


@pytest.mark.parametrize('arch', ['standard', 'topk', 'jumprelu'])
def test_saelens_files_load_and_match_saelens_outputs(arch, tmp_path):
    sae = load_sae(FIXTURES / arch)
    ref = load_file(FIXTURES / arch / 'reference.safetensors')
    assert sae.cfg.architecture == arch and sae.cfg.hook_name == 'blocks.1.hook_resid_post'
    with torch.no_grad():
        # the same float32 matrix products as SAELens's on 16 x 48 weights: observed 0 to 5e-7 on values of order 1-10
        assert_close(sae.encode(ref['x']), ref['encode'], atol=1e-5, rtol=1e-5, what=f'{arch} encode vs SAELens')
        assert_close(sae(ref['x']), ref['forward'], atol=1e-5, rtol=1e-5, what=f'{arch} forward vs SAELens')
    # saved again here, the folder has every field SAELens wrote (and SAELens's own loader accepts it:
    # tools/make_saelens_fixtures.py --check), and loads back to the same tensors
    save_sae(sae, tmp_path / arch)
    ours, theirs = (json.loads((d / SAE_CFG).read_text()) for d in (tmp_path / arch, FIXTURES / arch))
    assert set(theirs) <= set(ours) and set(theirs['metadata']) <= set(ours['metadata'])
    assert {k: ours[k] for k in theirs if k != 'metadata'} == {k: v for k, v in theirs.items() if k != 'metadata'}
    back = load_sae(tmp_path / arch)
    assert all(torch.equal(a, b) for a, b in zip(sae.state_dict().values(), back.state_dict().values()))


def test_pre_6_layout_loads(tmp_path):
    "SAELens before 6.0 wrote a flat cfg.json: hook_point, activation_fn_str, TopK's k in activation_fn_kwargs."
    shutil.copytree(FIXTURES / 'topk', tmp_path / 'old')
    new = json.loads((FIXTURES / 'topk' / SAE_CFG).read_text())
    old = dict(d_in=new['d_in'], d_sae=new['d_sae'], architecture='standard', activation_fn_str='topk', activation_fn_kwargs={'k': new['k']},
               hook_point=new['metadata']['hook_name'], model_name='tiny-llama', apply_b_dec_to_input=True, normalize_activations='none')
    (tmp_path / 'old' / SAE_CFG).write_text(json.dumps(old))
    sae = load_sae(tmp_path / 'old')
    assert (sae.cfg.architecture, sae.cfg.k, sae.cfg.hook_name) == ('topk', new['k'], new['metadata']['hook_name'])
    ref = load_file(FIXTURES / 'topk' / 'reference.safetensors')
    with torch.no_grad(): assert_close(sae(ref['x']), ref['forward'], atol=1e-5, rtol=1e-5, what='pre-6 topk forward')


def test_unsupported_configs_are_refused_with_the_reason(tmp_path):
    shutil.copytree(FIXTURES / 'standard', tmp_path / 's')
    cfg = json.loads((tmp_path / 's' / SAE_CFG).read_text())
    for change, words in (({'normalize_activations': 'layer_norm'}, 'fold the normalization'), ({'architecture': 'gated'}, "'gated' is not one"),
                          ({'d_in': 'x'}, 'no integer d_in')):
        (tmp_path / 's' / SAE_CFG).write_text(json.dumps({**cfg, **change}))
        with pytest.raises(SAEError, match=words): load_sae(tmp_path / 's')
    (tmp_path / 's' / SAE_CFG).write_text('{"d_in": 16,')
    with pytest.raises(SAEError, match='not valid JSON'): load_sae(tmp_path / 's')
    assert saelens_cfg(load_sae(FIXTURES / 'topk').cfg)['k'] == 6
