"""`llmlab launch` against a real Slurm: Debian's slurm-wlm (slurmctld, slurmd) and munge, started on this machine by the
`slurm` fixture with a configuration of its own (one node with this machine's CPUs, proctrack/linuxproc, no cgroups, no
accounting) and stopped after, every daemon it started. A 2-process training job runs through sbatch, srun and torchrun;
a second one is requeued mid-run and continues bit for bit; refusals come back as clear errors.
"""
import json, os, pwd, re, shutil, signal, socket, subprocess, sys, time
from pathlib import Path
import pytest, torch

# its tests share one cluster, and start processes: they run on the worker that runs the others that do (conftest.py)
pytestmark = pytest.mark.xdist_group('processes')

DAEMONS = ('munged', 'slurmctld', 'slurmd', 'sbatch', 'scontrol', 'sinfo', 'srun')
LLMLAB = str(Path(sys.executable).with_name('llmlab'))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def _pid(file: Path) -> int | None:
    try: return int(file.read_text().split()[0])
    except (OSError, ValueError, IndexError): return None


def _alive(pid) -> bool:
    try: os.kill(pid, 0); return True
    except ProcessLookupError: return False


@pytest.fixture(scope='module')
def slurm(tmp_path_factory):
    "A one-node Slurm cluster on this machine: its environment (SLURM_CONF) is set for the module's tests."
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        reason = (f"Slurm is not installed ({', '.join(missing)} missing): `make install` installs Debian's slurm-wlm and munge "
                  "when it runs as root with apt-get (sudo apt-get install slurm-wlm munge)")
        if os.geteuid() == 0 and shutil.which('apt-get'): pytest.fail(reason)   # make install would have installed it here
        pytest.skip(reason)
    d = tmp_path_factory.mktemp('slurm')
    for sub in ('state', 'spool'): (d / sub).mkdir()
    key = d / 'munge.key'
    key.write_bytes(os.urandom(1024)); key.chmod(0o600)
    host, user = socket.gethostname(), pwd.getpwuid(os.getuid()).pw_name
    socket_path = d / 'munge.sock'
    (d / 'slurm.conf').write_text('\n'.join([
        'ClusterName=llmlab-test', f'SlurmctldHost={host}(127.0.0.1)', f'SlurmUser={user}', f'SlurmdUser={user}',
        'AuthType=auth/munge', 'CredType=cred/munge', f'AuthInfo=socket={socket_path}',
        f'StateSaveLocation={d}/state', f'SlurmdSpoolDir={d}/spool', f'SlurmctldPidFile={d}/slurmctld.pid',
        f'SlurmdPidFile={d}/slurmd.pid', f'SlurmctldPort={free_port()}', f'SlurmdPort={free_port()}',
        f'SlurmctldLogFile={d}/slurmctld.log', f'SlurmdLogFile={d}/slurmd.log',
        'ProctrackType=proctrack/linuxproc', 'TaskPlugin=task/none', 'MpiDefault=none', 'ReturnToService=2',
        'SchedulerType=sched/backfill', 'SelectType=select/cons_tres', 'SelectTypeParameters=CR_CPU',
        'JobCompType=jobcomp/none', 'AccountingStorageType=accounting_storage/none', 'JobAcctGatherType=jobacct_gather/none',
        f'NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN',
        'EnforcePartLimits=ALL',   # as clusters set it: a job no partition can run is refused at submission, not left pending
        'PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP', '']))
    saved = os.environ.get('SLURM_CONF')
    os.environ['SLURM_CONF'] = str(d / 'slurm.conf')
    pid_files = {'munged': d / 'munged.pid', 'slurmctld': d / 'slurmctld.pid', 'slurmd': d / 'slurmd.pid'}
    started = {}
    def start(name, cmd):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)   # each daemon forks into the background
        deadline = time.time() + 30
        while _pid(pid_files[name]) is None and time.time() < deadline: time.sleep(0.1)
        if r.returncode or _pid(pid_files[name]) is None:
            logs = ''.join(f'\n--- {f.name}\n{f.read_text()[-1500:]}' for f in d.glob('*.log'))
            raise RuntimeError(f'{name} did not start: {r.stderr}{logs}')
        started[name] = _pid(pid_files[name])
    try:
        start('munged', ['munged', '--force', f'--socket={socket_path}', f'--key-file={key}', f"--pid-file={pid_files['munged']}",
                         f'--log-file={d}/munged.log', f'--seed-file={d}/munged.seed'])
        start('slurmctld', ['slurmctld', '-i'])
        start('slurmd', ['slurmd'])
        deadline = time.time() + 60
        while subprocess.run(['sinfo', '-h', '-o', '%T'], capture_output=True, text=True).stdout.strip() != 'idle':
            if time.time() > deadline: raise RuntimeError('the node did not become idle:\n' + (d / 'slurmctld.log').read_text()[-2000:])
            time.sleep(0.5)
        yield d
    finally:
        subprocess.run(['scancel', f'--user={user}'], capture_output=True, timeout=30)
        for name in ('slurmd', 'slurmctld', 'munged'):
            pid = started.get(name)
            if pid is None: continue
            os.kill(pid, signal.SIGTERM)
            deadline = time.time() + 30
            while _alive(pid) and time.time() < deadline: time.sleep(0.1)
            if _alive(pid): os.kill(pid, signal.SIGKILL)
        if saved is None: os.environ.pop('SLURM_CONF', None)
        else: os.environ['SLURM_CONF'] = saved
        assert not any(_alive(pid) for pid in started.values()), f'daemons left running: {started}'


@pytest.fixture(scope='module')
def config(tmp_path_factory):
    "A training config: a 2-layer model on stdlib source, with a 512-token byte-level BPE tokenizer trained here."
    import sysconfig
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    d = tmp_path_factory.mktemp('job')
    corpus = d / 'corpus'; corpus.mkdir()
    for f in sorted(Path(sysconfig.get_paths()['stdlib']).glob('[a-c]*.py'))[:12]: shutil.copy(f, corpus / f.name)
    tok = Tokenizer(models.BPE()); tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False); tok.decoder = decoders.ByteLevel()
    tok.train([str(p) for p in corpus.iterdir()], trainers.BpeTrainer(vocab_size=512, special_tokens=['<eos>'],
                                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token='<eos>').save_pretrained(d / 'tokenizer')
    cfg = d / 'config.yaml'
    cfg.write_text(json.dumps({
        'model': {'hidden_size': 32, 'intermediate_size': 64, 'num_hidden_layers': 2, 'num_attention_heads': 4, 'num_key_value_heads': 2},
        'data': {'corpus': str(corpus), 'tokenizer': str(d / 'tokenizer'), 'block_size': 32, 'val_fraction': 0.2},
        'train': {'max_steps': 200, 'batch_size': 8, 'lr': 3e-3, 'warmup_steps': 5, 'log_every': 1, 'eval_every': 50, 'eval_batches': 2,
                  'save_every': 10, 'keep_last': 2, 'progress': False, 'trackers': [], 'seed': 0}}))   # JSON is YAML
    return cfg


TIMING = ('tokens_per_second', 'peak_memory_mb', 'model_tflops', 'mfu')   # measured, so different in every run


def records(run_dir):
    return [{k: v for k, v in json.loads(l).items() if k not in TIMING} for l in (Path(run_dir) / 'metrics.jsonl').read_text().splitlines()]


@pytest.fixture(scope='module')
def reference(slurm, config, tmp_path_factory):
    "`llmlab launch --wait` of the config on 2 processes, uninterrupted: (run folder, job id, stdout, seconds)."
    run_dir = tmp_path_factory.mktemp('runs') / 'reference'
    t = time.time()
    r = subprocess.run([LLMLAB, 'launch', str(config), '--nproc-per-node', '2', '--run-dir', str(run_dir), '--wait'],
                       capture_output=True, text=True, timeout=600)
    job_id = r.stdout.split('submitted job ')[1].split(':')[0] if 'submitted job ' in r.stdout else None
    log = (run_dir / 'slurm' / f'{job_id}.out').read_text() if job_id else ''
    assert r.returncode == 0 and 'ended: COMPLETED' in r.stdout, f'{r.stdout}\n{r.stderr}\njob log:\n{log[-3000:]}'
    return run_dir, job_id, log, time.time() - t


@pytest.mark.slow
def test_two_process_training_job_runs_on_slurm(reference):
    run_dir, job_id, log, seconds = reference
    print(f'job {job_id}: submitted to completed in {seconds:.1f} s')
    assert f'llmlab: job {job_id} (restart 0)' in log
    assert (run_dir / 'slurm' / f'job-{job_id}.sbatch').read_text().count('--nproc-per-node=2') == 1
    # two processes trained together: a heartbeat from each, one world of 2, both finished
    ranks = [json.loads(p.read_text()) for p in sorted((run_dir / 'ranks').glob('rank-*.json'))]
    assert [(h['rank'], h['world_size'], h['status'], h['step']) for h in ranks] == [(0, 2, 'finished', 200), (1, 2, 'finished', 200)]
    assert len({h['pid'] for h in ranks}) == 2
    recs = records(run_dir)
    assert [r['step'] for r in recs if 'loss' in r] == list(range(1, 201))
    losses = [r['loss'] for r in recs if 'loss' in r]
    assert sum(losses[-20:]) / 20 < 0.8 * sum(losses[:5]) / 5, (losses[:5], losses[-20:])   # it learned (from ln 512 = 6.2)
    assert json.loads((run_dir / 'summary.json').read_text())['step'] == 200
    assert json.loads((run_dir / 'checkpoints' / 'latest.json').read_text())['name'] == 'step-00000200'
    assert json.loads((run_dir / 'run.json').read_text())['config']['max_steps'] == 200


@pytest.mark.slow
def test_requeued_job_resumes_and_its_loss_log_continues_bitwise(reference, config):
    from llmlab.launch import SlurmConfig, launch_slurm
    reference = reference[0]
    run_dir = reference.parent / 'requeued'
    job = launch_slurm(config, SlurmConfig(nproc_per_node=2), run_dir=run_dir)
    metrics, deadline = run_dir / 'metrics.jsonl', time.time() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 45):   # past the checkpoints of steps 10 to 40
        assert job.state() in ('PENDING', 'RUNNING') and time.time() < deadline, job.log.read_text()[-3000:] if job.log.exists() else job.info()
        time.sleep(0.02)
    job.requeue()                                   # what a preemption does: the job is stopped and goes back to the queue
    at_requeue = len(metrics.read_text().splitlines())
    assert at_requeue < 200, 'the job ended before it could be requeued'
    deadline = time.time() + 120
    while (info := job.info())['JobState'] != 'PENDING' or info.get('Restarts') != '1':
        assert time.time() < deadline, info
        time.sleep(0.2)
    # Slurm holds a requeued job for two minutes before it may start again; let it start now
    subprocess.run(['scontrol', 'update', f'JobId={job.job_id}', 'StartTime=now'], check=True, capture_output=True)
    state = job.wait(timeout=600)
    log = job.log.read_text()
    assert state == 'COMPLETED', log[-3000:]
    assert f'llmlab: job {job.job_id} (restart 0)' in log and f'llmlab: job {job.job_id} (restart 1)' in log
    # the requeue's SIGTERM reached every rank: each finished its step, one checkpoint was written there, the restart began there
    stopped = int(re.search(r"llmlab: SIGTERM: checkpointing at step (\d+) and stopping", log).group(1))
    assert at_requeue <= stopped <= at_requeue + 5, (at_requeue, stopped)
    assert f"llmlab: resumed from {run_dir.resolve()}/checkpoints/step-{stopped:08d} (step {stopped})" in log
    print(f'requeued after {at_requeue} logged steps; every rank stopped after step {stopped}, checkpointed, and the restart resumed there')
    assert records(run_dir) == records(reference)   # every loss, learning rate, gradient norm and validation loss, bit for bit
    from safetensors.torch import load_file
    a = load_file(reference / 'checkpoints' / 'step-00000200' / 'model.safetensors')
    b = load_file(run_dir / 'checkpoints' / 'step-00000200' / 'model.safetensors')
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_slurm_refusals_are_clear_errors_and_leave_the_run_folder_alone(slurm, config, tmp_path):
    from llmlab.launch import LaunchError, SlurmConfig, launch_slurm
    with pytest.raises(LaunchError, match=r"partition 'gpu-h100' does not exist on this cluster; its partitions: debug"):
        launch_slurm(config, SlurmConfig(partition='gpu-h100'), run_dir=tmp_path / 'a')
    with pytest.raises(LaunchError, match=r'sbatch refused the job: .*More processors requested than permitted'):
        launch_slurm(config, SlurmConfig(cpus_per_task=4096), run_dir=tmp_path / 'b')   # more than any node has
    assert list((tmp_path / 'b' / 'slurm').iterdir()) == []          # the script it tried is not left behind as if submitted
    r = subprocess.run([LLMLAB, 'launch', str(config), '--run-dir', str(tmp_path / 'c'), '--partition', 'nope'], capture_output=True, text=True)
    assert r.returncode == 2 and "LaunchError: partition 'nope' does not exist" in r.stderr, r.stderr
