"The Trainer across processes and crashes: DDP, FSDP2, TP, TP x FSDP and DeepSpeed against one process; resume after SIGKILL (also mid-checkpoint) and across world sizes."
import json, os, random, signal, subprocess, sys, textwrap, time
from pathlib import Path
import pytest, torch
from llmlab.core import assert_close

TORCHRUN = str(Path(sys.executable).with_name('torchrun'))
# the tests that start processes run on one pytest-xdist worker, one after another (conftest.py says why)
processes = pytest.mark.xdist_group('processes')

SCRIPT = textwrap.dedent('''
    import json, os, sys, time, torch
    from pathlib import Path
    from llmlab.data import TokenShards, build_shards
    from llmlab.model import Llama, ModelConfig
    from llmlab.train import Trainer, TrainConfig
    data_dir, run_dir, batch, micro, steps, resume = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
    slow = float(os.environ.get('SLOW_STEP', '0'))
    if os.environ.get('HANG_SAVE'):   # hold the run between writing checkpoint HANG_SAVE's folder and renaming it into place
        import accelerate
        real_save = accelerate.Accelerator.save_state
        def hanging_save(self, output_dir, *a, **k):
            out = real_save(self, output_dir, *a, **k)
            if Path(output_dir).name == f".step-{int(os.environ['HANG_SAVE']):08d}.tmp":
                Path(run_dir, 'checkpoint-written').touch(); time.sleep(600)   # the test kills the run here
            return out
        accelerate.Accelerator.save_state = hanging_save
    torch.manual_seed(0)
    moe = dict(mlp='moe', num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32) if os.environ.get('MOE') else {}
    model = Llama(ModelConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              max_position_embeddings=64, **moe))
    train = TokenShards(Path(data_dir), block_size=16)
    stop_at = int(os.environ.get('STOP_AT', '0'))
    class Slow:
        def on_step_end(self, trainer, record):
            time.sleep(slow)
            if record['step'] == stop_at: trainer.should_stop = True   # ends with a checkpoint, like a planned preemption
    cfg = TrainConfig(run_dir=run_dir, max_steps=steps, batch_size=batch, micro_batch_size=micro, lr=3e-3, warmup_steps=3, grad_clip=0.5,
                      log_every=1, eval_every=1000, save_every=int(os.environ.get('SAVE_EVERY', '1000')), keep_last=2,
                      resume=None if resume == 'none' else resume, progress=False, trackers=[],
                      parallelism=os.environ.get('PARALLELISM', 'ddp'), tp_size=int(os.environ.get('TP', '1')),
                      zero_stage=int(os.environ.get('ZERO', '3')), optimizer=os.environ.get('OPTIMIZER', 'adamw'), muon_lr=0.02)
    t = Trainer(model, cfg, train, callbacks=[Slow()])
    acc = t.accelerator
    if acc.num_processes > 1:   # Accelerate falls back to one process silently: say what we got
        assert torch.distributed.is_initialized() and torch.distributed.get_world_size() == acc.num_processes
        expected = {'ddp': 'DistributedDataParallel', 'fsdp': 'FSDPLlama' if cfg.tp_size < acc.num_processes else 'Llama',
                    'deepspeed': 'DeepSpeedEngine', 'ep': 'DistributedDataParallel'}[cfg.parallelism]
        assert type(t.model).__name__ == expected, type(t.model)
        if cfg.parallelism == 'fsdp':   # FSDP: every parameter is a DTensor shard; TP alone: the blocks' projections
            from torch.distributed.tensor import DTensor
            fsdp = t.mesh['dp'].size() > 1
            assert all(isinstance(p, DTensor) == (fsdp or '_proj' in n) for n, p in t.model.named_parameters())
            assert t.mesh['tp'].size() == cfg.tp_size
        if cfg.parallelism == 'deepspeed': assert t.model.zero_optimization_stage() == cfg.zero_stage
        if cfg.parallelism == 'ep':   # each process holds half of each layer's experts
            assert t.model.module.layers[0].mlp.experts.gate_up_proj.shape[0] == 4 // acc.num_processes
    t.fit()
    weights = t.full_state_dict()
    if acc.is_main_process: torch.save(weights, Path(run_dir) / 'final.pt')
''')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    from llmlab.data import build_shards
    class Tok:
        eos_token_id, name_or_path = 0, 'char'
        def __call__(self, texts, add_special_tokens=False): return {'input_ids': [[ord(c) % 31 + 1 for c in t] for t in texts]}
        def __len__(self): return 32
    rng = random.Random(0)
    docs = [''.join(rng.choice('abcdefgh ') for _ in range(rng.randint(20, 120))) for _ in range(200)]
    d = tmp_path_factory.mktemp('data')
    build_shards(docs, Tok(), d, progress=False, num_proc=1)
    script = d / 'train_script.py'
    script.write_text(SCRIPT)
    return d, script


def free_port() -> int:
    "A port no one listens on, for torchrun's rendezvous (tests may run side by side)."
    import socket
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0)); return sock.getsockname()[1]


def run(cmd, env=None, **kw):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', **(env or {})}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, **kw)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def losses(run_dir): return [json.loads(l)['loss'] for l in (Path(run_dir) / 'metrics.jsonl').read_text().splitlines()]


@pytest.fixture(scope='module')
def one_process(data, tmp_path_factory):
    "One process, the whole batch of 8 at once, 12 steps: the run DDP and the notebook launcher must reproduce (trained once)."
    d, script = data
    run_dir = tmp_path_factory.mktemp('one') / 'one'
    run([sys.executable, str(script), str(d), str(run_dir), '8', '8', '12', 'none'])
    return run_dir


@processes
def test_ddp_with_accumulation_and_clipping_equals_one_process(data, one_process, tmp_path):
    d, script = data
    run([TORCHRUN, '--nproc_per_node', '2', '--master_port', str(free_port()), str(script), str(d),
         str(tmp_path / 'ddp'), '8', '2', '12', 'none'])   # 2 processes x 2 sequences x 2 accumulation steps = 8
    one, ddp = torch.load(one_process / 'final.pt'), torch.load(tmp_path / 'ddp' / 'final.pt')
    # DDP averages float32 gradients across processes, one process sums the batch at once: the last bits differ, and Adam's
    # normalisation carries them into the weights (observed 5.9e-7 on weights ~0.1-1 after 12 steps; losses 4.8e-7 on ~3.4)
    for k in one: assert_close(ddp[k], one[k], atol=5e-6, what=f'DDP vs one process, weight {k}')
    assert_close(losses(tmp_path / 'ddp'), losses(one_process), atol=1e-6, rtol=1e-6, what='DDP vs one process, losses')


@pytest.fixture(scope='module')
def uninterrupted(data, tmp_path_factory):
    "24 steps with a checkpoint every 4, never stopped: what a killed and resumed run must equal bit for bit (trained once)."
    d, script = data
    run_dir = tmp_path_factory.mktemp('full') / 'full'
    run([sys.executable, str(script), str(d), str(run_dir), '8', '4', '24', 'none'], env={'SAVE_EVERY': '4'})
    return run_dir


@processes
@pytest.mark.parametrize('where', ['at a random step', 'while writing a checkpoint'])
def test_sigkill_then_resume_auto_is_bitwise_identical(data, uninterrupted, tmp_path, where):
    d, script = data
    hang_at = random.Random(2).choice([8, 12, 16])
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'SAVE_EVERY': '4', 'SLOW_STEP': '0.15'}
    if where != 'at a random step': env['HANG_SAVE'] = str(hang_at)
    p = subprocess.Popen([sys.executable, str(script), str(d), str(tmp_path / 'killed'), '8', '4', '24', 'none'], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckdir, metrics = tmp_path / 'killed' / 'checkpoints', tmp_path / 'killed' / 'metrics.jsonl'
    target = random.Random(1).randint(6, 18)
    deadline, caught = time.time() + 300, False
    while time.time() < deadline and p.poll() is None:
        if where == 'at a random step':
            caught = metrics.exists() and len(metrics.read_text().splitlines()) >= target
        else:   # checkpoint `hang_at` is written, not yet renamed into place; earlier ones are complete
            caught = (tmp_path / 'killed' / 'checkpoint-written').exists()
        if caught: break
        time.sleep(0.001)
    os.kill(p.pid, signal.SIGKILL); p.wait()
    assert caught, 'the run ended before it could be killed where intended'
    if where != 'at a random step':                                      # the half-written checkpoint is still there
        assert (ckdir / f'.step-{hang_at:08d}.tmp').is_dir() and not (ckdir / f'step-{hang_at:08d}').exists()
        assert any(ckdir.glob('step-*'))
    latest = json.loads((ckdir / 'latest.json').read_text())
    assert (ckdir / latest['name']).is_dir()                              # "latest" always points at a whole checkpoint
    run([sys.executable, str(script), str(d), str(tmp_path / 'killed'), '8', '4', '24', 'auto'], env={'SAVE_EVERY': '4'})
    assert losses(tmp_path / 'killed') == losses(uninterrupted)      # bitwise
    a, b = torch.load(uninterrupted / 'final.pt'), torch.load(tmp_path / 'killed' / 'final.pt')
    assert all(torch.equal(a[k], b[k]) for k in a)


@processes
def test_muon_under_ddp_and_fsdp2_trains_like_one_process_and_resumes_bitwise(data, tmp_path):
    "Muon (llmlab.optim.MuonAdamW): DDP's matrices are whole, FSDP2's are shards gathered per matrix for Newton-Schulz."
    d, script = data
    muon = {'OPTIMIZER': 'muon'}
    launch(script, d, tmp_path / 'one', 0, 8, 8, 12, 'none', env=muon)
    launch(script, d, tmp_path / 'ddp', 2, 8, 4, 12, 'none', env=muon)
    launch(script, d, tmp_path / 'fsdp', 2, 8, 4, 12, 'none', env={**muon, 'PARALLELISM': 'fsdp'})
    # the processes' gradients differ from one process's in the last bits (another summation order); Newton-Schulz in float32
    # (the CPU default) keeps that at rounding level: observed 7.4e-7 after 12 steps on weights ~0.1 (in bfloat16: 6e-3)
    assert weights_close(tmp_path / 'one', tmp_path / 'ddp', 1e-5) and weights_close(tmp_path / 'one', tmp_path / 'fsdp', 1e-5)
    launch(script, d, tmp_path / 'fsdp-stopped', 2, 8, 4, 12, 'none', env={**muon, 'PARALLELISM': 'fsdp', 'STOP_AT': '5'})
    launch(script, d, tmp_path / 'fsdp-stopped', 2, 8, 4, 12, 'auto', env={**muon, 'PARALLELISM': 'fsdp'})
    assert losses(tmp_path / 'fsdp-stopped') == losses(tmp_path / 'fsdp')                    # bitwise, momentum shards and all
    a, b = torch.load(tmp_path / 'fsdp' / 'final.pt'), torch.load(tmp_path / 'fsdp-stopped' / 'final.pt')
    assert all(torch.equal(a[k], b[k]) for k in a)


def launch(script, d, run_dir, nproc, *args, env=None):
    "The test script on `nproc` processes (torchrun) or in this interpreter's python (nproc=0: no launcher at all)."
    cmd = [sys.executable] if nproc == 0 else [TORCHRUN, '--nproc_per_node', str(nproc), '--master_port', str(free_port())]
    return run(cmd + [str(script), str(d), str(run_dir), *map(str, args)], env=env)


def weights_close(a_dir, b_dir, tol):
    a, b = torch.load(Path(a_dir) / 'final.pt'), torch.load(Path(b_dir) / 'final.pt')
    assert sorted(a) == sorted(b)
    # each caller states the bound and the error it observed
    for k in a: assert_close(b[k], a[k], atol=tol, what=f'final weight {k}, {Path(b_dir).name} vs {Path(a_dir).name}')
    return True


@processes
def test_fsdp2_resume_bitwise_on_the_same_world_size_and_across_world_sizes(data, tmp_path):
    "FSDP2 through the Trainer, checkpoints in DCP: stopped at step 6 and resumed on 2 processes; and resharded 2 -> 1 -> 2."
    d, script = data
    env = {'PARALLELISM': 'fsdp', 'SAVE_EVERY': '4'}
    launch(script, d, tmp_path / 'full', 2, 8, 4, 12, 'none', env=env)
    launch(script, d, tmp_path / 'two', 2, 8, 4, 12, 'none', env={**env, 'STOP_AT': '6'})
    assert len(losses(tmp_path / 'two')) == 6 and (tmp_path / 'two' / 'checkpoints' / 'step-00000006' / 'dcp').is_dir()
    import shutil
    shutil.copytree(tmp_path / 'two', tmp_path / 'two_to_one')
    launch(script, d, tmp_path / 'two', 2, 8, 4, 12, 'auto', env=env)
    assert losses(tmp_path / 'two') == losses(tmp_path / 'full')                  # bitwise, same world size
    a, b = torch.load(tmp_path / 'full' / 'final.pt'), torch.load(tmp_path / 'two' / 'final.pt')
    assert all(torch.equal(a[k], b[k]) for k in a)
    launch(script, d, tmp_path / 'two_to_one', 0, 8, 4, 12, 'auto', env={**env, 'STOP_AT': '8'})   # resharded 2 -> 1, steps 7-8
    assert (tmp_path / 'two_to_one' / 'checkpoints' / 'step-00000008' / 'dcp').is_dir()            # written by one process
    launch(script, d, tmp_path / 'two_to_one', 2, 8, 4, 12, 'auto', env=env)                       # resharded 1 -> 2, steps 9-12
    got = losses(tmp_path / 'two_to_one')
    assert len(got) == 12
    # resharded resumes reduce in another order: observed 2.4e-7 on losses ~3.4 (same world size: bitwise, checked above)
    assert_close(got, losses(tmp_path / 'full'), atol=1e-5, what='FSDP2 resumed 2 -> 1 -> 2 vs uninterrupted losses')
    assert weights_close(tmp_path / 'full', tmp_path / 'two_to_one', 1e-5)     # observed 3.0e-8


@processes
def test_expert_parallel_training_matches_one_process_and_resumes_on_one(data, tmp_path):
    """parallelism='ep': a MoE's experts split over 2 processes (DDP for the rest) trains like one process, accumulation and
    clipping included; stopped at step 6, its checkpoint (every expert and its AdamW moments, through DCP) resumes on one process."""
    d, script = data
    moe = {'MOE': '1', 'PARALLELISM': 'ep'}
    launch(script, d, tmp_path / 'one', 0, 8, 4, 12, 'none', env=moe)
    launch(script, d, tmp_path / 'ep', 2, 8, 4, 12, 'none', env=moe)
    # the experts' gradients arrive by all-to-all and are summed in another order: observed 4.8e-7 on losses ~3.4
    assert_close(losses(tmp_path / 'ep'), losses(tmp_path / 'one'), atol=1e-5, what='EP 2 vs one process, losses')
    # the norm clipping divides by: every rank's experts and the rest (AdamW would hide a wrong clipping factor in the weights)
    norms = lambda run: [json.loads(line)['grad_norm'] for line in (run / 'metrics.jsonl').read_text().splitlines()]
    assert_close(norms(tmp_path / 'ep'), norms(tmp_path / 'one'), rtol=1e-5, what='EP 2 vs one process, gradient norms')   # observed 2.4e-7 on ~2
    assert weights_close(tmp_path / 'one', tmp_path / 'ep', 1e-5)              # observed 1.2e-7
    launch(script, d, tmp_path / 'stopped', 2, 8, 4, 12, 'none', env={**moe, 'STOP_AT': '6'})
    assert (tmp_path / 'stopped' / 'checkpoints' / 'step-00000006' / 'dcp').is_dir()
    launch(script, d, tmp_path / 'stopped', 0, 8, 4, 12, 'auto', env=moe)        # resharded 2 -> 1: every expert from the shards
    got = losses(tmp_path / 'stopped')
    assert len(got) == 12 and got[:6] == losses(tmp_path / 'ep')[:6]
    # steps 7-12 on one process from the EP checkpoint: observed 2.4e-7 against the uninterrupted EP run
    assert_close(got, losses(tmp_path / 'ep'), atol=1e-5, what='EP 2 stopped, resumed on 1, vs uninterrupted losses')
    assert weights_close(tmp_path / 'ep', tmp_path / 'stopped', 1e-5)          # observed 6.0e-8


@processes
def test_tensor_parallel_and_2d_training_match_one_process(data, tmp_path):
    "The Trainer with TP alone (2 processes) and TP x FSDP on a (2, 2) mesh (4 processes) against one process."
    d, script = data
    launch(script, d, tmp_path / 'one', 0, 8, 4, 12, 'none')
    launch(script, d, tmp_path / 'tp', 2, 8, 4, 12, 'none', env={'PARALLELISM': 'fsdp', 'TP': '2'})
    launch(script, d, tmp_path / '2d', 4, 8, 4, 12, 'none', env={'PARALLELISM': 'fsdp', 'TP': '2'})
    for name in ('tp', '2d'):
        # tensor-parallel matmuls sum partial products across ranks: observed 4.8e-7 on losses, 3.4e-6 on weights
        assert_close(losses(tmp_path / name), losses(tmp_path / 'one'), atol=1e-5, what=f'{name} vs one process, losses')
        assert weights_close(tmp_path / 'one', tmp_path / name, 3e-5), name    # observed 3.4e-6 after 12 AdamW steps


NOTEBOOK_LAUNCH = textwrap.dedent('''
    import sys, torch
    from pathlib import Path
    from accelerate import notebook_launcher
    def train(data_dir, run_dir):   # what a notebook cell defines: everything Accelerate touches is created inside
        import torch.distributed as dist
        from llmlab.data import TokenShards
        from llmlab.model import Llama, ModelConfig
        from llmlab.train import Trainer, TrainConfig
        torch.manual_seed(0)
        model = Llama(ModelConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  max_position_embeddings=64))
        cfg = TrainConfig(run_dir=run_dir, max_steps=12, batch_size=8, micro_batch_size=4, lr=3e-3, warmup_steps=3, grad_clip=0.5,
                          log_every=1, eval_every=1000, save_every=1000, progress=False, trackers=[])
        t = Trainer(model, cfg, TokenShards(Path(data_dir), block_size=16))
        assert dist.is_initialized() and dist.get_world_size() == 2 and type(t.model).__name__ == 'DistributedDataParallel'
        t.fit()
        (Path(run_dir) / f'ok-{t.accelerator.process_index}').touch()
    notebook_launcher(train, (sys.argv[1], sys.argv[2]), num_processes=2)
''')


@processes
def test_notebook_launcher_trains_on_two_processes(data, one_process, tmp_path):
    "From a notebook: `accelerate.notebook_launcher` forks 2 ranks that train like one process with the whole batch."
    d, script = data
    nb = tmp_path / 'notebook_cell.py'
    nb.write_text(NOTEBOOK_LAUNCH)
    run([sys.executable, str(nb), str(d), str(tmp_path / 'nb')])
    assert (tmp_path / 'nb' / 'ok-0').exists() and (tmp_path / 'nb' / 'ok-1').exists()
    # DDP through notebook_launcher: float32 averaging across processes, observed 4.8e-7 on losses ~3.4
    assert_close(losses(tmp_path / 'nb'), losses(one_process), atol=1e-6, rtol=1e-6, what='notebook_launcher vs one process, losses')


@pytest.fixture(scope='module')
def ddp_reference(data, tmp_path_factory):
    "DDP on 2 processes, batch 8 in micro-batches of 2: the run each DeepSpeed stage must reproduce (trained once for the three)."
    d, script = data
    run_dir = tmp_path_factory.mktemp('ddp') / 'ddp'
    launch(script, d, run_dir, 2, 8, 2, 12, 'none')
    return run_dir


@processes
@pytest.mark.slow
@pytest.mark.parametrize('stage', [1, 3])
def test_deepspeed_zero_trains_like_ddp(data, ddp_reference, tmp_path, stage):
    """DeepSpeed ZeRO through Accelerate (2 processes, gloo): the same losses and weights as DDP, accumulation and clipping included.
    Stages 1 (optimizer states sharded) and 3 (parameters too, gathered for each layer and for the checkpoint); stage 2 lies between
    them and passes through the same llmlab code (Accelerate's plugin takes the stage number)."""
    pytest.importorskip('deepspeed')
    d, script = data
    launch(script, d, tmp_path / 'zero', 2, 8, 2, 12, 'none', env={'PARALLELISM': 'deepspeed', 'ZERO': str(stage)})
    # DeepSpeed reduces (and with ZeRO-3 gathers) in its own order: observed 2.4e-7 on losses, 1.2e-6 on weights
    assert_close(losses(tmp_path / 'zero'), losses(ddp_reference), atol=1e-5, what='DeepSpeed ZeRO vs DDP, losses')
    assert weights_close(ddp_reference, tmp_path / 'zero', 1e-5)              # observed 1.2e-6 (ZeRO-3)


@pytest.mark.slow
def test_lora_fine_tune_of_smollm2_lowers_its_loss_on_chat_data(smol_short_dir, tmp_path, tokenizer):
    """LoRA on SmolLM2's attention (its first layers, conftest.py: the whole model's fine-tune is nbs/tutorials/finetune_smollm2),
    assistant-only loss, on generated arithmetic chats; held-out loss must fall and the base weights stay as they were."""
    from llmlab.checkpoints import load_hf_dir
    from llmlab.data import ChatDataset
    from llmlab.train import Trainer, TrainConfig, add_lora
    rng = random.Random(0)
    def conv():
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        return [{'role': 'user', 'content': f'Add {a} and {b}.'}, {'role': 'assistant', 'content': f'{a} + {b} = {a + b}'}]
    train, val = ChatDataset([conv() for _ in range(96)], tokenizer, 48), ChatDataset([conv() for _ in range(16)], tokenizer, 48)
    model = add_lora(load_hf_dir(smol_short_dir), r=8, alpha=16,
                     target_modules=('q_proj', 'k_proj', 'v_proj', 'o_proj'))
    base_weights = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    cfg = TrainConfig(run_dir=str(tmp_path / 'lora'), max_steps=16, batch_size=8, lr=2e-3, warmup_steps=2, eval_every=16,
                      eval_batches=2, save_every=10**6, log_every=4, schedule='constant', progress=False)
    t = Trainer(model, cfg, train, val)
    before = t.evaluate()['val_loss']
    after = t.fit()['val_loss']
    print(f'LoRA fine-tune of SmolLM2: held-out assistant-token loss {before:.3f} -> {after:.3f}')
    assert after < before - 0.3, (before, after)
    assert all(torch.equal(p, base_weights[n]) for n, p in t.accelerator.unwrap_model(t.model).named_parameters() if n in base_weights)
