"""Small SAEs saved by SAELens itself, with SAELens's outputs on fixed inputs: the reference tests/test_sae.py loads.

Run in a virtual environment with sae-lens installed (it needs transformer-lens < 4, so not llmlab's own):

    python -m venv /tmp/saelens && /tmp/saelens/bin/pip install sae-lens
    /tmp/saelens/bin/python tools/make_saelens_fixtures.py tests/fixtures/saelens          # write the fixtures
    /tmp/saelens/bin/python tools/make_saelens_fixtures.py --check DIR                     # SAELens loads an SAE llmlab saved

Each architecture gets a folder as `SAE.save_model` writes it (cfg.json, sae_weights.safetensors) and reference.safetensors:
inputs `x` and SAELens's `encode(x)` and `forward(x)` on them. The weights are random but not at their initial values
(biases and thresholds nonzero, decoder rows of unequal norm), so every term of the maths is exercised.
"""
import argparse, importlib.metadata, json, sys
from pathlib import Path
import torch
from safetensors.torch import save_file

D_IN, D_SAE, N = 16, 48, 24


def build(arch):
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
    meta = dict(model_name='tiny-llama', hook_name='blocks.1.hook_resid_post', hook_head_index=None)
    if arch == 'topk': sae = TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=6))
    elif arch == 'jumprelu': sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE))
    else: sae = StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE))
    for k, v in meta.items(): sae.cfg.metadata[k] = v
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if name.startswith('b_') else 1.0))
        if arch == 'jumprelu': sae.threshold.copy_(torch.rand(D_SAE, generator=g) * 0.5)
    return sae


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('out', nargs='?', default='tests/fixtures/saelens')
    ap.add_argument('--check', help='a folder llmlab saved: load it with SAELens and print its encode on random inputs')
    a = ap.parse_args()
    from sae_lens import SAE
    if a.check:
        sae = SAE.load_from_disk(a.check)
        x = torch.randn(4, sae.cfg.d_in, generator=torch.Generator().manual_seed(1))
        print(json.dumps(dict(architecture=sae.cfg.architecture(), d_in=sae.cfg.d_in, d_sae=sae.cfg.d_sae,
                              hook_name=sae.cfg.metadata.hook_name, l0=(sae.encode(x) > 0).sum(-1).tolist(),
                              recon=sae(x).sum().item())))
        return
    version = importlib.metadata.version('sae-lens')
    for arch in ('standard', 'topk', 'jumprelu'):
        sae = build(arch)
        folder = Path(a.out) / arch
        sae.save_model(folder)
        x = torch.randn(N, D_IN, generator=torch.Generator().manual_seed(1)) * 2
        with torch.no_grad(): ref = dict(x=x, encode=sae.encode(x), forward=sae(x))
        save_file({k: v.contiguous() for k, v in ref.items()}, folder / 'reference.safetensors')
        print(f'{folder}: {arch}, sae-lens {version}, L0 {(ref["encode"] > 0).sum(-1).float().mean():.1f}', file=sys.stderr)


if __name__ == '__main__':
    main()
