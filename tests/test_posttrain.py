"Post-training across processes: SFT (uneven learned tokens per micro-batch, packed rows) under DDP and FSDP2, and GRPO (rollouts on each process) under DDP, against one process."
import json, textwrap
from pathlib import Path
import pytest, torch
from llmlab.core import assert_close
from test_train import launch, losses, processes

SCRIPT = textwrap.dedent('''
    import os, sys, torch
    from pathlib import Path
    from llmlab.grpo import GRPOTask
    from llmlab.model import Llama, ModelConfig
    from llmlab.sft import SFTTask, pack_examples
    from llmlab.train import Trainer, TrainConfig
    out = Path(sys.argv[2]); parallelism = os.environ.get('PARALLELISM', 'ddp')
    def model():
        torch.manual_seed(0)
        return Llama(ModelConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 max_position_embeddings=64, eos_token_id=0))
    g = torch.Generator().manual_seed(0)
    def example(n, learned):   # a prompt of n - learned tokens, then `learned` tokens to learn
        ids = torch.randint(1, 32, (n,), generator=g)
        labels = torch.cat([torch.full((n - learned,), -100), ids[n - learned + 1:], torch.tensor([-100])])
        return {'input_ids': ids, 'labels': labels}
    examples = [example(int(torch.randint(6, 30, (1,), generator=g)), int(torch.randint(2, 6, (1,), generator=g))) for _ in range(48)]
    rows = (pack_examples(examples[:32], 40) + examples[32:])[:32]     # packed rows and single examples; 4 batches of 8 an epoch
    cfg = dict(max_steps=6, batch_size=8, lr=3e-3, warmup_steps=0, schedule='constant', grad_clip=0.5, trackers=[], progress=False,
               log_every=1, save_every=1000, parallelism=parallelism)
    world = int(os.environ.get('WORLD_SIZE', '1'))
    t = Trainer(model(), TrainConfig(run_dir=str(out / 'sft'), micro_batch_size=8 // world // 2 if world > 1 else 8, **cfg), rows, task=SFTTask())
    t.sampler.shuffle = False
    t.fit()
    w = t.full_state_dict()
    if t.accelerator.is_main_process: torch.save(w, out / 'sft' / 'final.pt')
    if parallelism != 'ddp': sys.exit(0)
    class CharTok:
        eos_token_id, pad_token_id, eos_token, chat_template = 0, 0, None, None
        def __call__(self, text, add_special_tokens=False): return {'input_ids': [ord(ch) % 31 + 1 for ch in text]}
        def decode(self, ids, **kw): return ''.join(chr(i + 29) for i in ids)
    def sevens(prompts, completions, completion_ids, **kw): return [ids.count(ord('7') - 29) / max(1, len(ids)) for ids in completion_ids]
    task = GRPOTask(CharTok(), [sevens], num_generations=4, max_completion_length=6, loss_type=os.environ.get('LOSS', 'dapo'), epsilon_high=0.28)
    # eps=1e-6: where a step's advantages cancel, gradients are at rounding level, and Adam's default eps (1e-8) would scale those
    # last bits up to whole steps (observed 1.2e-4 apart after 4 steps); the 1e-6 keeps the comparison about the gradients
    t = Trainer(model(), TrainConfig(run_dir=str(out / 'grpo'), eps=1e-6, **{**cfg, 'max_steps': 4}), [{'prompt': p} for p in ('a:', 'bb:', 'c:', 'dd:')], task=task)
    t.fit()
    w = t.full_state_dict()
    if t.accelerator.is_main_process: torch.save(w, out / 'grpo' / 'final.pt')
''')


@pytest.fixture(scope='module')
def script(tmp_path_factory):
    path = tmp_path_factory.mktemp('posttrain') / 'posttrain_script.py'
    path.write_text(SCRIPT)
    return path


def final(run_dir): return torch.load(Path(run_dir) / 'final.pt')


@processes
def test_sft_and_grpo_on_several_processes_equal_one_process(script, tmp_path):
    # one process: the whole batch of 8 at once; two: 2 rows x 2 micro-batches each (SFT), a prompt's group of 4 each (GRPO)
    launch(script, tmp_path, tmp_path / 'one', 0)
    launch(script, tmp_path, tmp_path / 'ddp', 2)
    launch(script, tmp_path, tmp_path / 'fsdp', 2, env={'PARALLELISM': 'fsdp'})
    # SFT: each step's loss is the mean over every learned token of the batch, however they fall into micro-batches and
    # processes (a micro-batch holds 1 to 16 of them); float32 sums in another order: observed 4.8e-7 on losses ~3.5, and
    # 4.1e-6 on weights ~0.1 after 6 AdamW steps at lr 3e-3 (Adam's normalisation carries the gradients' last bits into them)
    for kind in ('ddp', 'fsdp'):
        assert_close(losses(tmp_path / kind / 'sft'), losses(tmp_path / 'one' / 'sft'), atol=2e-6, what=f'SFT losses, {kind} vs one process')
        one, other = final(tmp_path / 'one' / 'sft'), final(tmp_path / kind / 'sft')
        for k in one: assert_close(other[k], one[k], atol=2e-5, what=f'SFT weight {k}, {kind} vs one process')
    # GRPO: each process rolls out its own prompts' groups with the same per-completion seeds, so the completions, rewards and
    # advantages are the one process's; the dapo loss divides by every process's completion tokens together. Observed 0 on the
    # rewards, 2.4e-8 on losses ~0.1 and 2.4e-6 on weights after 4 steps
    one, ddp = [[json.loads(l) for l in (tmp_path / k / 'grpo' / 'metrics.jsonl').read_text().splitlines()] for k in ('one', 'ddp')]
    assert [r['reward'] for r in ddp] == [r['reward'] for r in one]
    assert_close([r['loss'] for r in ddp], [r['loss'] for r in one], atol=1e-6, what='GRPO losses, DDP vs one process')
    a, b = final(tmp_path / 'one' / 'grpo'), final(tmp_path / 'ddp' / 'grpo')
    for k in a: assert_close(b[k], a[k], atol=2e-5, what=f'GRPO weight {k}, DDP vs one process')
