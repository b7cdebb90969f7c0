"Tensor parallelism and FSDP2 on 2 processes (gloo, CPU) against the unsharded model."
import os, sys, subprocess, textwrap
from pathlib import Path

TORCHRUN = str(Path(sys.executable).with_name('torchrun'))

SCRIPT = textwrap.dedent('''
    import sys, torch, torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor
    from llmlab.model import Llama, ModelConfig
    from llmlab.parallel import apply_tensor_parallel, apply_fsdp
    dist.init_process_group('gloo')
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == 2
    mode = sys.argv[1]
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=6,
                      num_key_value_heads=2, tie_word_embeddings=False)
    ref = Llama(cfg); model = Llama(cfg); model.load_state_dict(ref.state_dict())
    mesh = init_device_mesh('cpu', (world,))
    ids = torch.randint(0, 64, (4, 10), generator=torch.Generator().manual_seed(1))
    if mode == 'tp':
        apply_tensor_parallel(model, mesh)
        mine = ids                                   # every TP rank sees the whole batch
    else:
        apply_fsdp(model, mesh)
        mine = ids[rank * 2:(rank + 1) * 2]          # data parallel: each rank half of the batch
    opt, ref_opt = torch.optim.AdamW(model.parameters(), lr=1e-2), torch.optim.AdamW(ref.parameters(), lr=1e-2)
    for step in range(3):
        out, expect = model(mine), ref(ids)
        if mode == 'tp': assert (out - expect).abs().max() < 1e-5, (out - expect).abs().max()
        loss = torch.nn.functional.cross_entropy(out[:, :-1].flatten(0, 1), mine[:, 1:].flatten())
        ref_loss = torch.nn.functional.cross_entropy(expect[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        loss.backward(); ref_loss.backward(); opt.step(); ref_opt.step(); opt.zero_grad(); ref_opt.zero_grad()
    sharded = 0
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        full = p.full_tensor() if isinstance(p, DTensor) else p
        sharded += isinstance(p, DTensor) and p.to_local().shape != p.shape
        assert (full - q).abs().max() < 1e-5, (name, (full - q).abs().max())
    expected_sharded = 14 if mode == 'tp' else 21   # TP: 7 linears x 2 blocks; FSDP: every parameter
    assert sharded == expected_sharded, (mode, sharded)
    if mode == 'tp' and rank == 0:
        try: apply_tensor_parallel(Llama(cfg.replace(num_attention_heads=3, num_key_value_heads=3, hidden_size=48)), mesh)
        except ValueError as e: assert 'not divisible by the tensor-parallel size 2' in str(e)
        else: raise AssertionError('no error for 3 heads on 2 ranks')
    dist.destroy_process_group()
    print('ok', mode, rank)
''')


def run_two(mode, tmp_path):
    script = tmp_path / 'parallel_check.py'
    script.write_text(SCRIPT)
    r = subprocess.run([TORCHRUN, '--nproc_per_node', '2', '--master_port', str(29700 + os.getpid() % 200), str(script), mode],
                       capture_output=True, text=True, timeout=300, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count(f'ok {mode}') == 2


def test_tensor_parallel_matches_the_unsharded_model(tmp_path):
    run_two('tp', tmp_path)


def test_fsdp2_training_steps_match_the_unsharded_model(tmp_path):
    run_two('fsdp', tmp_path)
