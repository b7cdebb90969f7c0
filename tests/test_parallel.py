"Tensor parallelism, FSDP2, pipelines and expert parallelism on 2 or 4 processes (gloo, CPU) against the unsharded model."
import os, sys, subprocess, textwrap
from pathlib import Path
import pytest


def free_port() -> int:
    "A port no one listens on, for torchrun's rendezvous (tests may run side by side)."
    import socket
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0)); return sock.getsockname()[1]


TORCHRUN = str(Path(sys.executable).with_name('torchrun'))
pytestmark = pytest.mark.xdist_group('processes')   # one after another on one worker (conftest.py says why)

SCRIPT = textwrap.dedent('''
    import sys, torch, torch.distributed as dist
    from pathlib import Path
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor
    from llmlab.model import Llama, ModelConfig
    from llmlab.parallel import apply_tensor_parallel, apply_fsdp
    from llmlab.core import assert_close
    dist.init_process_group('gloo')
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == 2
    def check(mode):
        torch.manual_seed(0)
        cfg = ModelConfig(vocab_size=64, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=6,
                          num_key_value_heads=2, tie_word_embeddings=False)
        recipe = mode == 'tp-recipe'   # QK-norm (its gains whole on every rank), an ungated MLP, soft-capped logits
        if recipe: cfg = cfg.replace(qk_norm=True, mlp='relu2', logit_softcap=5.0)
        ref = Llama(cfg); model = Llama(cfg); model.load_state_dict(ref.state_dict())
        mesh = init_device_mesh('cpu', (world,))
        ids = torch.randint(0, 64, (4, 10), generator=torch.Generator().manual_seed(1))
        if mode.startswith('tp'):
            apply_tensor_parallel(model, mesh)
            mine = ids                                   # every TP rank sees the whole batch
        else:
            apply_fsdp(model, mesh)
            mine = ids[rank * 2:(rank + 1) * 2]          # data parallel: each rank half of the batch
        # AdamW's first steps are lr * sign(gradient): where a ReLU^2 MLP leaves gradients of ~1e-8, summation-order differences flip
        # signs (observed 7e-4 on an o_proj weight after one step), so the recipe model takes plain SGD steps
        Opt = torch.optim.SGD if recipe else torch.optim.AdamW
        opt, ref_opt = Opt(model.parameters(), lr=1e-2), Opt(ref.parameters(), lr=1e-2)
        for step in range(3):
            out, expect = model(mine), ref(ids)
            # sharded matmuls sum partial products across ranks: observed 6.7e-7 on logits of magnitude ~1
            if mode.startswith('tp'): assert_close(out, expect, atol=1e-5, what=f'{mode} logits, step {step}')
            loss = torch.nn.functional.cross_entropy(out[:, :-1].flatten(0, 1), mine[:, 1:].flatten())
            ref_loss = torch.nn.functional.cross_entropy(expect[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
            loss.backward(); ref_loss.backward(); opt.step(); ref_opt.step(); opt.zero_grad(); ref_opt.zero_grad()
        sharded = 0
        for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
            full = p.full_tensor() if isinstance(p, DTensor) else p
            sharded += isinstance(p, DTensor) and p.to_local().shape != p.shape
            # three AdamW steps at lr 1e-2: Adam's normalisation turns last-bit gradient differences into ~lr-sized ones where a
            # gradient is near zero (observed 5.1e-6 on weights ~0.1)
            assert_close(full, q, atol=5e-5, what=f'{mode} weight {name} after 3 steps')
        expected_sharded = {'tp': 14, 'tp-recipe': 12, 'fsdp': 21}[mode]   # TP: 7 (6 without a gate) linears x 2 blocks (QK-norm gains: replicated); FSDP: every parameter
        assert sharded == expected_sharded, (mode, sharded)
        if mode == 'tp' and rank == 0:
            try: apply_tensor_parallel(Llama(cfg.replace(num_attention_heads=3, num_key_value_heads=3, hidden_size=48)), mesh)
            except ValueError as e: assert 'not divisible by the tensor-parallel size 2' in str(e)
            else: raise AssertionError('no error for 3 heads on 2 ranks')
            try: apply_tensor_parallel(Llama(cfg.replace(attention='mla', kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8)), mesh)
            except ValueError as e: assert "attention='mla' is not implemented" in str(e)
            else: raise AssertionError('no error for tensor parallelism of MLA')
    for mode in sys.argv[1:]:   # one launch, every mode: a torchrun start costs more than a mode
        check(mode)
        (Path(sys.argv[0]).parent / f'ok-{mode}-{rank}').touch()   # a file per rank: stdout of two ranks interleaves
    dist.destroy_process_group()
''')


def test_tensor_parallel_with_and_without_recipe_options_and_fsdp2_match_the_unsharded_model(tmp_path):
    "TP (plain, and with QK-norm, a ReLU² MLP and soft-capped logits) and FSDP2 training steps on 2 processes, in one launch."
    script = tmp_path / 'parallel_check.py'
    script.write_text(SCRIPT)
    modes = ['tp-recipe', 'tp', 'fsdp']
    r = subprocess.run([TORCHRUN, '--nproc_per_node', '2', '--master_port', str(free_port()), str(script), *modes],
                       capture_output=True, text=True, timeout=300, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stderr[-3000:]
    assert all((tmp_path / f'ok-{mode}-{rank}').exists() for mode in modes for rank in (0, 1))


EXPERT_PARALLEL = textwrap.dedent('''
    import sys, torch, torch.distributed as dist
    from pathlib import Path
    from safetensors.torch import load_file, save_file
    from torch.distributed.tensor import DTensor
    from torch.nn.parallel import DistributedDataParallel as DDP
    from llmlab.core import assert_close
    from llmlab.expert_parallel import (apply_expert_parallel, apply_expert_parallel_fsdp, expert_parallel_mesh,
                                        expert_parallel_state_dict, load_expert_parallel_state_dict)
    from llmlab.model import Llama, ModelConfig
    from llmlab.moe import moe_aux_loss
    dist.init_process_group('gloo'); rank, world = dist.get_rank(), dist.get_world_size()
    here, resume_from = Path(sys.argv[0]).parent, sys.argv[1] if len(sys.argv) > 1 else None
    torch.manual_seed(0)
    # the z-loss is a mean over tokens (equal shards: its mean over ranks is the whole batch's); Switch's loss is not, so it is off
    cfg = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, mlp='moe',
                      num_experts=8, num_experts_per_tok=2, moe_intermediate_size=24, router_z_loss_coef=1e-3)
    local = 8 // world
    ids = torch.randint(0, 64, (8, 10), generator=torch.Generator().manual_seed(1))
    mine = ids[rank * local:(rank + 1) * local]
    lm = lambda logits, x: torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten())

    def gathered_gradients(model):
        "Every parameter's gradient as one process would hold it: FSDP2's shards and the ranks' experts gathered."
        out = {}
        for name, p in model.named_parameters():
            g = p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
            if '.experts.' in name:
                m = model.get_submodule(name.rpartition('.')[0]); parts = [torch.empty_like(g) for _ in range(m.ep_size)]
                dist.all_gather(parts, g.contiguous(), group=m.ep_group); g = torch.cat(parts)
            out[name] = g
        return out

    def train_like_one_process(parallelize, what):
        "3 AdamW steps of this rank's share against one process on the whole batch; every weight (gathered) compared after them."
        torch.manual_seed(0)
        ref = Llama(cfg); model = Llama(cfg); model.load_state_dict(ref.state_dict())
        wrapped = parallelize(model)
        opt, ref_opt = torch.optim.AdamW(wrapped.parameters(), lr=1e-2), torch.optim.AdamW(ref.parameters(), lr=1e-2)
        for step in range(3):
            out = wrapped(mine)
            loss = lm(out, mine) + moe_aux_loss(model)
            expect = ref(ids)
            ref_loss = lm(expect, ids) + moe_aux_loss(ref)
            # this rank's tokens through experts on every rank: observed <= 9e-7 on logits ~1 (EP 2 and 4, EP 2 x FSDP2 2)
            assert_close(out, expect[rank * local:(rank + 1) * local], atol=1e-5, what=f'{what} logits, step {step}')
            loss.backward(); ref_loss.backward()
            if step == 0:   # the gradients themselves (AdamW's steps would hide a gradient off by a constant factor)
                for name, g in gathered_gradients(model).items():
                    # another summation order: observed <= 2.2e-8 (an expert gradient left a sum over ranks fails here)
                    assert_close(g, ref.get_parameter(name).grad, atol=1e-6, what=f'{what}: gradient of {name}')
            opt.step(); ref_opt.step(); opt.zero_grad(); ref_opt.zero_grad()
        full = expert_parallel_state_dict(model)
        for name, q in ref.state_dict().items():
            # three AdamW steps: where a gradient is near zero Adam can turn last-bit differences into ~lr-sized ones (observed <= 4.7e-7
            # with DDP, 5.5e-7 with FSDP2)
            assert_close(full[name], q, atol=5e-5, what=f'{what}: {name} after 3 steps')
        return model, full

    model, full = train_like_one_process(lambda m: DDP(apply_expert_parallel(m)), f'EP {world} with DDP')   # experts over every rank
    assert model.layers[0].mlp.experts.gate_up_proj.shape[0] == 8 // world
    if world == 4:   # EP 2 x FSDP2: experts split in 2, each half sharded over the 2 ranks that hold it; the rest sharded over all 4
        fsdp, _ = train_like_one_process(lambda m: apply_expert_parallel_fsdp(m, expert_parallel_mesh(world, 2)), 'EP 2 x FSDP2 2')
        experts = fsdp.layers[0].mlp.experts.gate_up_proj
        assert experts.to_local().shape[0] == 2 and experts.shape[0] == 4   # 4 of 8 experts on this EP rank, 2 of them here
    if rank == 0: save_file({k: v.contiguous() for k, v in full.items()}, str(here / f'ep{world}.safetensors'))
    if resume_from:                                              # a checkpoint of another expert-parallel size
        saved = load_file(resume_from)
        resumed = apply_expert_parallel(Llama(cfg)); load_expert_parallel_state_dict(resumed, saved)
        single = Llama(cfg); single.load_state_dict(saved)       # and on one process (EP 1)
        with torch.no_grad():
            # the same experts on the same tokens: observed 0
            assert_close(resumed(mine), single(ids)[rank * local:(rank + 1) * local], atol=1e-5, what=f'EP {world} resumed from {resume_from}')
    dist.destroy_process_group()
    (here / f'ok-ep{world}-{rank}').touch()
''')


def test_expert_parallel_2_and_4_train_like_one_process_and_reshard_checkpoints(tmp_path):
    """EP 2 then EP 4 (with DDP for the rest), and EP 2 x FSDP2 2 on the 4 ranks, train like one process; EP 4 and EP 1 resume the
    EP 2 checkpoint, which has every expert."""
    script = tmp_path / 'expert_parallel_check.py'
    script.write_text(EXPERT_PARALLEL)
    for world, resume in ((2, []), (4, [str(tmp_path / 'ep2.safetensors')])):
        r = subprocess.run([TORCHRUN, '--nproc_per_node', str(world), '--master_port', str(free_port()), str(script), *resume],
                           capture_output=True, text=True, timeout=300, env={**os.environ, 'OMP_NUM_THREADS': '1'})
        assert r.returncode == 0, r.stderr[-3000:]
        assert all((tmp_path / f'ok-ep{world}-{rank}').exists() for rank in range(world))
    from safetensors.torch import load_file
    assert load_file(tmp_path / 'ep2.safetensors')['layers.0.mlp.experts.gate_up_proj'].shape[0] == 8   # every expert saved


PIPELINE = textwrap.dedent('''
    import sys, torch, torch.distributed as dist
    from pathlib import Path
    from llmlab.model import Llama, ModelConfig
    from llmlab.parallel import pipeline_stage, pipeline_schedule
    from llmlab.core import assert_close
    dist.init_process_group('gloo'); rank, world = dist.get_rank(), dist.get_world_size()
    def check(schedule):
        torch.manual_seed(0)
        cfg = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
        ref = Llama(cfg); model = Llama(cfg); model.load_state_dict(ref.state_dict())
        stage = pipeline_stage(model, rank, world)
        ids = torch.randint(0, 64, (8, 10), generator=torch.Generator().manual_seed(1))
        x, y = ids[:, :-1], ids[:, 1:]
        loss_fn = lambda out, tgt: torch.nn.functional.cross_entropy(out.flatten(0, 1), tgt.flatten())
        sched = pipeline_schedule(stage, rank, world, n_microbatches=4, loss_fn=loss_fn, schedule=schedule)
        losses = []
        if rank == 0: sched.step(x)
        else: sched.step(target=y, losses=losses)
        ref_loss = loss_fn(ref(x), y); ref_loss.backward()
        mine = {id(p): p for p in stage.parameters()}
        # stage parameters are the model's own modules: compare each with the same parameter of the reference model
        for (n, p), (rn, rp) in zip(model.named_parameters(), ref.named_parameters()):
            # micro-batched gradients summed in another order: observed 1.9e-8
            if id(p) in mine: assert_close(p.grad, rp.grad, atol=1e-5, what=f'{schedule} pipeline gradient {n}')
        # mean of micro-batch losses vs the whole batch's: observed 4.8e-7 on ~3.5
        if rank == world - 1: assert_close(torch.stack(losses).mean(), ref_loss, atol=1e-5, what=f'{schedule} pipeline loss')
    for schedule in sys.argv[1:]:   # one launch for both schedules
        check(schedule)
        (Path(sys.argv[0]).parent / f'ok-{schedule}-{rank}').touch()
    dist.destroy_process_group()
''')


def test_pipeline_1f1b_and_gpipe_steps_match_the_unsharded_model(tmp_path):
    script = tmp_path / 'pipeline_check.py'
    script.write_text(PIPELINE)
    r = subprocess.run([TORCHRUN, '--nproc_per_node', '2', '--master_port', str(free_port()), str(script), '1f1b', 'gpipe'],
                       capture_output=True, text=True, timeout=300, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stderr[-3000:]
    assert all((tmp_path / f'ok-{schedule}-{rank}').exists() for schedule in ('1f1b', 'gpipe') for rank in (0, 1))
