"""Experiment trackers beside TensorBoard: MLflow with a SQLite backend store in the run folder, W&B offline. What a run
logs is read back through MLflow's client and from W&B's own run files, and compared with metrics.jsonl; a resumed run
continues the same tracker runs; a tracker that is missing or cannot start stops the run with an error that says what to do.
"""
import importlib.util, json, os, re, struct, subprocess, sys
from pathlib import Path
import pytest, torch
from llmlab.data import TokenShards, build_shards
from llmlab.model import Llama, ModelConfig
from llmlab.train import TrackerError, Trainer, TrainConfig, read_metrics


class CharTokenizer:
    eos_token_id, name_or_path = 0, 'char'
    def __call__(self, texts, add_special_tokens=False): return {'input_ids': [[ord(c) % 31 + 1 for c in t] for t in texts]}
    def __len__(self): return 32


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp('data')
    return TokenShards(build_shards(['the quick brown fox jumps over the lazy dog ' * 3] * 40, CharTokenizer(), d, progress=False, num_proc=1), 16)


class StopAt:
    def __init__(self, step): self.step = step
    def on_step_end(self, trainer, record):
        if record['step'] == self.step: trainer.should_stop = True


def train(data, run_dir, trackers, stop_at=None, resume=None):
    torch.manual_seed(0)
    model = Llama(ModelConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4))
    cfg = TrainConfig(run_dir=str(run_dir), max_steps=20, batch_size=4, lr=3e-3, warmup_steps=2, log_every=1, eval_every=5,
                      eval_batches=2, save_every=10, progress=False, trackers=trackers, resume=resume)
    return Trainer(model, cfg, data, data, callbacks=[StopAt(stop_at)] if stop_at else []).fit()


def by_step(records, key):
    "{step: value} of `key` in metrics.jsonl's records."
    return {r['step']: r[key] for r in records if key in r}


def wandb_records(run_dir):
    """The protobuf records of a run's offline W&B files, in order: each `run-*.wandb` is W&B's 7-byte header followed by a
    LevelDB-style log (32 KiB blocks of chunks, each with a 7-byte header: crc32c, length, type FULL/FIRST/MIDDLE/LAST)."""
    from wandb.proto import wandb_internal_pb2 as pb
    out = []
    for f in sorted(Path(run_dir, 'wandb').glob('offline-run-*/run-*.wandb')):
        data, pos, pending = f.read_bytes(), 7, b''
        assert data[:4] == b':W&B', f
        while pos + 7 <= len(data):
            if 32768 - pos % 32768 < 7: pos += 32768 - pos % 32768; continue   # a block's tail too short for a header is padding
            _, length, kind = struct.unpack('<IHB', data[pos:pos + 7])
            pending += data[pos + 7:pos + 7 + length]; pos += 7 + length
            if kind in (1, 4):                                                   # FULL or LAST: a whole record
                r = pb.Record(); r.ParseFromString(pending); out.append(r); pending = b''
    return out


def wandb_history(run_dir) -> dict:
    "{step: {key: value}} from the history records."
    rows = {}
    for r in wandb_records(run_dir):
        if r.WhichOneof('record_type') != 'history': continue
        items = {i.key or '/'.join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
        rows.setdefault(items.pop('_step'), {}).update({k: v for k, v in items.items() if not k.startswith('_')})
    return rows


def test_mlflow_and_wandb_get_what_metrics_jsonl_gets_and_resume_continues_their_runs(data, tmp_path, monkeypatch):
    pytest.importorskip('mlflow'); pytest.importorskip('wandb')
    from mlflow.tracking import MlflowClient
    monkeypatch.setenv('WANDB_MODE', 'offline'); monkeypatch.delenv('MLFLOW_TRACKING_URI', raising=False)
    run_dir = tmp_path / 'run'
    train(data, run_dir, ['tensorboard', 'mlflow', 'wandb'], stop_at=10)
    ids = json.loads((run_dir / 'trackers.json').read_text())
    train(data, run_dir, ['tensorboard', 'mlflow', 'wandb'], resume='auto')
    assert json.loads((run_dir / 'trackers.json').read_text()) == ids   # the same tracker runs, continued
    recs = read_metrics(run_dir)
    assert max(r['step'] for r in recs) == 20

    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")   # the run folder's own database
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.run_id for r in runs] == [ids['mlflow']]
    run = runs[0]
    for key in ('loss', 'lr', 'grad_norm', 'val_loss', 'tokens_per_second'):
        history = client.get_metric_history(run.info.run_id, key)
        assert {m.step: m.value for m in history} == by_step(recs, key), key        # exactly: MLflow keeps doubles
        assert len(history) == len(by_step(recs, key)), key                         # the resume logged nothing twice
    assert run.data.params['lr'] == '0.003' and run.data.params['trackers'] == json.dumps(['tensorboard', 'mlflow', 'wandb'])
    assert run.data.params['git_revision'] == run.data.tags['llmlab.git_revision'] != ''
    assert run.data.tags['llmlab.run_dir'] == str(run_dir.resolve())

    rows = wandb_history(run_dir)
    for key in ('loss', 'lr', 'grad_norm', 'val_loss'):
        assert {s: row[key] for s, row in rows.items() if key in row} == by_step(recs, key), key
    configs = [json.loads(i.value_json) for r in wandb_records(run_dir) if r.WhichOneof('record_type') == 'config'
               for i in r.config.update if i.key == 'lr']
    assert configs and all(c == 0.003 for c in configs)
    runs = {r.run.run_id for r in wandb_records(run_dir) if r.WhichOneof('record_type') == 'run'}
    assert runs == {ids['wandb']}                                                   # one W&B run id across the resume


def test_a_missing_or_failing_tracker_is_an_error_that_says_what_to_do(data, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    with monkeypatch.context() as m:   # as if mlflow were not installed
        m.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'mlflow' else real(name, *a))
        with pytest.raises(TrackerError, match=r"trackers has 'mlflow' but mlflow is not installed: pip install 'llmlab\[mlflow\]'"):
            train(data, tmp_path / 'missing', ['mlflow'])
    assert not (tmp_path / 'missing' / 'metrics.jsonl').exists()                   # it stopped before the first step
    pytest.importorskip('wandb')
    # W&B online without a login, in a fresh process (W&B keeps the first run's settings for the life of a process)
    env = {**os.environ, 'WANDB_MODE': 'online', 'HOME': str(tmp_path), 'WANDB_CONFIG_DIR': str(tmp_path / 'wandb-config')}
    env.pop('WANDB_API_KEY', None)
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from test_tracking import *; "
            f"train(TokenShards({str(data.path)!r}, 16), {str(tmp_path / 'no-login')!r}, ['wandb'])")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode != 0 and re.search(r"TrackerError: the trackers \['wandb'\] failed to start: UsageError: No API key configured.*"
                                           r"`wandb login`, or WANDB_MODE=offline", r.stderr), r.stderr[-3000:]
    with pytest.raises(Exception, match=r"trackers has 'neptune'; choose from tensorboard, mlflow, wandb"):
        train(data, tmp_path / 'unknown', ['neptune'])
