#!/usr/bin/env bash
# REALM pre-training on Cloud TPU, in one command: a trainer slice running
# `realm-pretrain` and a separate builder slice running `realm-index-builder`
# (a second JAX process cannot share a TPU VM's chips), sharing nothing but
# the gs:// workdir (see WORKSPACE.md).
#
#   bash launch/tpu_pretrain.sh --name=realm1 --project=P --zone=us-central2-b \
#     --trainer-type=v4-64 --builder-type=v4-16 --workdir=gs://BUCKET/realm1 \
#     --ict-workdir=gs://BUCKET/ict --spot -- --config.train.num_steps=200000
#
# Steps (each printed before it runs; --dry-run prints them only, no gcloud
# needed):
#   0. Compiles the trainer's step for --trainer-type and the builder's
#      embed step for a --builder-type host, here, ahead of time
#      (realm-compile, run as .venv/bin/python -m realm_jax.jobs.aot: libtpu, no
#      TPU; `pip install -e '.[tpu]'` in this repository's .venv), with the
#      same config and overrides, and stops if either does not fit in a
#      chip's memory -- before any TPU is paid for. --skip-compile skips it.
#   1. Checks that WORKDIR/corpus (written by realm-prepare-corpus, e.g. on a
#      CPU VM with --workdir=gs://...) and the ICT checkpoints exist, before
#      any TPU is paid for.
#   2. For NAME-trainer and NAME-builder: reuses the TPU VM if
#      `gcloud compute tpus tpu-vm describe` finds it (READY, or STOPPED ->
#      started), else creates it.
#   3. Ships the repository's tracked files, as they are in the working tree
#      (`git stash create` + `git archive`: uncommitted edits of tracked files
#      are included, untracked files are not; the tarball's pax header names
#      the commit) to every worker of both slices, and installs them there:
#      launch/install.sh (Python >= 3.11: installed with apt when the image
#      lacks it), then `pip install -e '.[tpu]'` (jax[tpu] / libtpu).
#   4. Starts realm-index-builder on every builder worker and realm-pretrain
#      on every trainer worker, each in a detached tmux session (realm-builder
#      / realm-trainer) that outlives the ssh connection, with
#      REALM_DISTRIBUTED=1 so the program calls jax.distributed.initialize()
#      (TPU auto-detection: coordinator and process ids from the TPU
#      metadata). Each worker appends to its own log,
#      ~/realm_logs/{trainer,builder}.w<N>.log, N being the worker number
#      from the TPU VM metadata attribute `agent-worker-number` -- the value
#      jax's TPU cluster detection turns into jax.process_index(), so w<N>
#      is process N. ($TPU_WORKER_ID is set on GKE, not reliably in an ssh
#      session on a TPU VM; it and then the hostname are the fallbacks.)
#   5. Prints how to follow the logs, stop the jobs and delete the VMs.
#   6. With --watch=SECONDS, stays in the foreground until the trainer
#      writes WORKDIR/TRAINING_DONE, checking both VMs every SECONDS: a
#      slice that was preempted (or deleted) is created again, gets the
#      code and its job again, and the job resumes from WORKDIR.
#
# Re-running the same command is safe: existing VMs are reused, the code is
# re-shipped and re-installed, and jobs still running are stopped (SIGTERM,
# then the tmux session is killed) and restarted; both programs resume from
# WORKDIR (the trainer from its latest checkpoint, the builder from its
# finished chunks). That is also the recovery after a spot preemption: a
# VM found PREEMPTED is deleted and created again (by a re-run, or by
# --watch without one).
#
# Cost knobs (docs/pod.md; builder sizing: docs/capacity_plan.md):
#   --trainer-type   the trainer slice. REALM pre-trained on 64 TPUv3 cores
#                    (batch 512, 200k steps); e.g. v4-64 (32 chips, 8 hosts).
#                    The slice is billed while it exists, whether the job
#                    runs or not: delete both VMs when done (printed below).
#   --builder-type   the builder slice (REALM used 16 TPUs). Its size sets
#                    how fresh the index is: one refresh re-embeds every
#                    block, so refresh time ~= num_blocks / (blocks/s per
#                    chip x chips) (`python bench/embed_throughput.py` gives
#                    blocks/s). REALM refreshed about every 500 trainer
#                    steps; if a refresh takes longer than 500 steps of the
#                    trainer, the index just gets staler (the trainer logs
#                    staleness = train step - index step) rather than
#                    blocking anything. A smaller builder is cheaper and
#                    staler; one larger than the refresh needs idles.
#   --spot           spot VMs: much cheaper, but may be preempted at any time;
#                    run with --watch (e.g. in a tmux session on a small VM),
#                    or re-run this command after a preemption: either
#                    recreates the preempted slice and both jobs resume from
#                    WORKDIR.
#   --version        TPU software version (default tpu-ubuntu2204-base).
# The gs:// bucket should be in the slices' region (egress and latency).
set -euo pipefail

PROG=tpu_pretrain.sh
case "$0" in */*) HERE=${0%/*} ;; *) HERE=. ;; esac
REPO=$(cd "$HERE/.." && pwd)
REMOTE_DIR=realm_jax           # on each worker, relative to the home folder
TARBALL_NAME=realm_jax.tar.gz

usage() {
  cat <<EOF
Usage: bash launch/$PROG --name=NAME --project=PROJECT --zone=ZONE
         --trainer-type=TYPE --builder-type=TYPE --workdir=gs://BUCKET/PATH
         [--version=VERSION] [--variant=tiny|base|large]
         [--ict-workdir=gs://...] [--spot] [--watch=SECONDS]
         [--skip-compile] [--dry-run] [-- --config.x=y ...]

REALM pre-training on Cloud TPU: realm-pretrain on TPU VM NAME-trainer and
realm-index-builder on TPU VM NAME-builder, sharing only the gs:// workdir.

  --name          prefix of the TPU VM names (NAME-trainer, NAME-builder)
  --project       Google Cloud project
  --zone          zone of both slices, e.g. us-central2-b
  --trainer-type  accelerator type of the trainer slice, e.g. v4-64
  --builder-type  accelerator type of the index builder slice, e.g. v4-16
  --version       TPU software version (default: tpu-ubuntu2204-base)
  --workdir       gs:// workspace shared by both jobs; must hold corpus/
  --variant       config variant, tiny|base|large (default: base)
  --ict-workdir   gs:// workdir of an ICT run to start the retriever from
                  (passed to the trainer as --config.init_from=)
  --spot          create spot VMs (cheaper, preemptible)
  --watch         SECONDS: after starting, check both VMs every SECONDS
                  until WORKDIR/TRAINING_DONE exists; a preempted slice is
                  recreated and its job restarted (resumes from WORKDIR)
  --skip-compile  do not compile both programs for the slices first
  --dry-run       print every command instead of running it (no gcloud needed)
  --help          this message
Arguments after -- (e.g. --config.train.num_steps=1000) go to the trainer;
a --config.corpus_dir=gs://... among them goes to the builder too.
See the header of this script for the steps and the cost knobs.
EOF
}

die() {
  echo "$PROG: error: $*" >&2
  exit 2
}

# A word quoted for display so the printed command can be pasted into bash
# (--flag='value' rather than '--flag=value').
quote() {
  if [[ $1 =~ ^[-A-Za-z0-9_./:=@%+,]+$ ]]; then
    printf '%s' "$1"
  elif [[ $1 =~ ^(--[a-z][-a-z0-9.]*=)(.*)$ ]]; then
    printf '%s' "${BASH_REMATCH[1]}"
    quote "${BASH_REMATCH[2]}"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Escapes a string for use inside double quotes on the remote shell.
dq_escape() {
  local s=${1//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//\$/\\\$}
  printf '%s' "${s//\`/\\\`}"
}

# Prints a command, then runs it (unless --dry-run).
run() {
  local line='+' word
  for word in "$@"; do line+=" $(quote "$word")"; done
  echo "$line"
  if (( DRY_RUN )); then return 0; fi
  "$@"
}

# ---------------------------------------------------------------- flags
NAME='' PROJECT='' ZONE='' TRAINER_TYPE='' BUILDER_TYPE='' WORKDIR=''
VERSION=tpu-ubuntu2204-base VARIANT=base ICT_WORKDIR='' SPOT=0 DRY_RUN=0
SKIP_COMPILE=0 WATCH=0
OVERRIDES=()

set_flag() {
  case "$1" in
    --name) NAME=$2 ;;
    --project) PROJECT=$2 ;;
    --zone) ZONE=$2 ;;
    --trainer-type) TRAINER_TYPE=$2 ;;
    --builder-type) BUILDER_TYPE=$2 ;;
    --version) VERSION=$2 ;;
    --workdir) WORKDIR=$2 ;;
    --variant) VARIANT=$2 ;;
    --ict-workdir) ICT_WORKDIR=$2 ;;
    --watch) WATCH=$2 ;;
    *) die "unknown flag $1 (see --help)" ;;
  esac
}

while (( $# )); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --spot) SPOT=1 ;;
    --dry-run) DRY_RUN=1 ;;
    --skip-compile) SKIP_COMPILE=1 ;;
    --) shift; OVERRIDES=("$@"); break ;;
    --spot=* | --dry-run=* | --skip-compile=* | --help=*)
      die "${1%%=*} takes no value" ;;
    --*=*) set_flag "${1%%=*}" "${1#*=}" ;;
    --*)
      (( $# >= 2 )) || die "$1 needs a value"
      set_flag "$1" "$2"
      shift
      ;;
    *) die "unexpected argument '$1' (overrides for the trainer go after --)" ;;
  esac
  shift
done

for required in name project zone trainer-type builder-type workdir; do
  var=${required^^}
  var=${var//-/_}
  [[ -n ${!var} ]] || die "missing required flag --$required (see --help)"
done
[[ $NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
  die "--name must be lowercase letters, digits and dashes (got '$NAME')"
# Both slices see only what is in the bucket: a local path would be two
# different, unshared folders.
GS_PATH='^gs://[a-z0-9][-a-z0-9_.]*(/[-A-Za-z0-9_.~/=@%+,]*)?$'
[[ $WORKDIR =~ $GS_PATH ]] ||
  die "--workdir must be a gs:// path shared by both slices, e.g. gs://BUCKET/run (got '$WORKDIR')"
WORKDIR=${WORKDIR%/}
if [[ -n $ICT_WORKDIR ]]; then
  [[ $ICT_WORKDIR =~ $GS_PATH ]] ||
    die "--ict-workdir must be a gs:// path (got '$ICT_WORKDIR')"
  ICT_WORKDIR=${ICT_WORKDIR%/}
fi
[[ $WATCH =~ ^[0-9]+(\.[0-9]+)?$ ]] ||
  die "--watch must be a number of seconds (got '$WATCH')"
case "$VARIANT" in tiny | base | large) ;;
  *) die "--variant must be tiny, base or large (got '$VARIANT')" ;; esac
CORPUS_DIR=$WORKDIR/corpus
for arg in "${OVERRIDES[@]}"; do
  [[ $arg == --* ]] || die "trainer arguments after -- must be flags such as --config.x=y (got '$arg')"
  if [[ $arg == --config.corpus_dir=* ]]; then CORPUS_DIR=${arg#*=}; fi
done

if (( ! DRY_RUN )); then
  command -v gcloud >/dev/null ||
    die "gcloud not found: install the Google Cloud SDK (or use --dry-run)"
  command -v git >/dev/null || die "git not found"
fi

TRAINER_VM=$NAME-trainer
BUILDER_VM=$NAME-builder
WHERE=(--project="$PROJECT" --zone="$ZONE")
TPU=(gcloud compute tpus tpu-vm)

# ------------------------------------------- 0. compile ahead of time, here
if (( SKIP_COMPILE )); then
  echo "# 0. Ahead-of-time compile skipped (--skip-compile)"
else
  echo "# 0. Compile both programs for $TRAINER_TYPE / a $BUILDER_TYPE host (realm-compile)"
  COMPILE=("$REPO/.venv/bin/python" -m realm_jax.jobs.aot --platform=tpu
    --config="$REPO/configs/pretrain.py:$VARIANT"
    --builder_config="$REPO/configs/index_builder.py:$VARIANT"
    --topology="$TRAINER_TYPE" --builder_topology="$BUILDER_TYPE"
    "${OVERRIDES[@]}")
  if (( ! DRY_RUN )) && [[ ! -x ${COMPILE[0]} ]]; then
    die "${COMPILE[0]} not found: bash launch/install.sh && .venv/bin/pip install -e '.[tpu]' (or --skip-compile)"
  fi
  run "${COMPILE[@]}" ||
    die "realm-compile failed (above): the config does not fit $TRAINER_TYPE / $BUILDER_TYPE; nothing was created"
fi

# ------------------------------------------------ 1. inputs exist in GCS
echo "# 1. Inputs in $WORKDIR"
if ! run gcloud storage ls "$CORPUS_DIR/manifest.json"; then
  die "no corpus at $CORPUS_DIR: run realm-prepare-corpus --workdir=$WORKDIR first"
fi
INIT_FROM=()
if [[ -n $ICT_WORKDIR ]]; then
  if ! run gcloud storage ls "$ICT_WORKDIR/checkpoints/"; then
    die "no checkpoints in $ICT_WORKDIR/checkpoints (--ict-workdir)"
  fi
  INIT_FROM=(--config.init_from="$ICT_WORKDIR")
fi

# ---------------------------------------------------------- 2. the slices
ensure_slice() {
  local vm=$1 type=$2 found='' state
  echo "# 2. TPU VM $vm ($type)"
  if (( DRY_RUN )); then
    run "${TPU[@]}" describe "$vm" "${WHERE[@]}" \
      --format='value(acceleratorType.basename(),state)'
    echo "# (dry run: $vm treated as not found)"
  else
    echo "+ ${TPU[*]} describe $vm ${WHERE[*]}"
    found=$("${TPU[@]}" describe "$vm" "${WHERE[@]}" \
      --format='value(acceleratorType.basename(),state)' 2>/dev/null) ||
      found=''
  fi
  if [[ -z $found ]]; then
    local create=("${TPU[@]}" create "$vm" "${WHERE[@]}"
      --accelerator-type="$type" --version="$VERSION")
    if (( SPOT )); then create+=(--spot); fi
    run "${create[@]}"
    return
  fi
  read -r found_type state <<<"$found"
  [[ $found_type == "$type" ]] ||
    die "$vm exists with accelerator type $found_type, not $type: delete it or use another --name"
  case "$state" in
    READY) echo "# reusing $vm (READY)" ;;
    STOPPED) run "${TPU[@]}" start "$vm" "${WHERE[@]}" ;;
    PREEMPTED | TERMINATED)  # cannot be restarted, only replaced
      echo "# $vm is $state: deleting it and creating it again"
      run "${TPU[@]}" delete "$vm" "${WHERE[@]}" --quiet
      ensure_slice "$vm" "$type" ;;
    *) die "$vm is $state; wait for it, or delete it (${TPU[*]} delete $vm ${WHERE[*]} --quiet) and re-run" ;;
  esac
}
ensure_slice "$TRAINER_VM" "$TRAINER_TYPE"
ensure_slice "$BUILDER_VM" "$BUILDER_TYPE"

# ------------------------------------------------- 3. code, installation
echo "# 3. Ship the repository's tracked files and install on every worker"
if (( DRY_RUN )); then
  TARBALL=/tmp/realm_jax.XXXXXX/$TARBALL_NAME
  echo "+ git -C $(quote "$REPO") stash create  # the working tree's tracked files as a commit (no ref changes); HEAD when clean"
  echo "+ git -C $(quote "$REPO") archive --format=tar.gz --output=$TARBALL COMMIT"
else
  STAGING=$(mktemp -d)
  trap 'rm -rf "$STAGING"' EXIT
  TARBALL=$STAGING/$TARBALL_NAME
  echo "+ git -C $(quote "$REPO") stash create"
  COMMIT=$(git -C "$REPO" stash create)
  COMMIT=${COMMIT:-$(git -C "$REPO" rev-parse HEAD)}
  run git -C "$REPO" archive --format=tar.gz --output="$TARBALL" "$COMMIT"
fi

# Replaces everything but .venv (kept: re-runs reinstall quickly), installs
# a Python >= 3.11 and tmux with apt when missing, then the package.
read -r -d '' INSTALL <<EOF || true
set -e
mkdir -p ~/$REMOTE_DIR && cd ~/$REMOTE_DIR
find . -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {} +
tar -xzf ~/$TARBALL_NAME
PY=\$(command -v python3.13 || command -v python3.12 || command -v python3.11 || true)
if [ -z "\$PY" ] || ! command -v tmux >/dev/null; then
  sudo apt-get -o DPkg::Lock::Timeout=600 update -q
  sudo apt-get -o DPkg::Lock::Timeout=600 install -y -q python3.11 python3.11-venv tmux
  PY=\${PY:-python3.11}
fi
PYTHON=\$PY bash launch/install.sh
.venv/bin/pip install --quiet -e ".[tpu]"
EOF

install_on() {  # VM
  run "${TPU[@]}" scp "$TARBALL" "$1:$TARBALL_NAME" "${WHERE[@]}" --worker=all
  run "${TPU[@]}" ssh "$1" "${WHERE[@]}" --worker=all --command="$INSTALL"
}
install_on "$BUILDER_VM"
install_on "$TRAINER_VM"

# ------------------------------------------------------------ 4. the jobs
# The remote command for one job on every worker of a slice: find the
# worker number, stop a previous run of this job (SIGTERM, up to 2 minutes,
# then the session is killed), start the program in a detached tmux session
# appending to ~/realm_logs/JOB.wN.log.
job_command() {
  local job=$1 program=() word
  shift
  for word in "$@"; do program+=("$(dq_escape "$(quote "$word")")"); done
  cat <<EOF
mkdir -p ~/realm_logs
W=\$(curl -sf -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || echo "\${TPU_WORKER_ID:-\$(hostname)}")
if tmux has-session -t realm-$job 2>/dev/null; then
  P=\$(tmux list-panes -t realm-$job -F "#{pane_pid}")
  kill -TERM "\$P" 2>/dev/null || true
  for _ in \$(seq 120); do kill -0 "\$P" 2>/dev/null || break; sleep 1; done
  tmux kill-session -t realm-$job 2>/dev/null || true
  sleep 2
fi
tmux new -d -s realm-$job "cd ~/$REMOTE_DIR && REALM_DISTRIBUTED=1 exec .venv/bin/${program[*]} >> ~/realm_logs/$job.w\$W.log 2>&1"
echo "worker \$W: realm-$job started, log ~/realm_logs/$job.w\$W.log"
EOF
}

BUILDER_ARGS=(--config="configs/index_builder.py:$VARIANT" --workdir="$WORKDIR")
if [[ $CORPUS_DIR != "$WORKDIR/corpus" ]]; then
  BUILDER_ARGS+=(--config.corpus_dir="$CORPUS_DIR")
fi
TRAINER_ARGS=(--config="configs/pretrain.py:$VARIANT" --workdir="$WORKDIR"
  "${INIT_FROM[@]}" "${OVERRIDES[@]}")

start_builder() {
  run "${TPU[@]}" ssh "$BUILDER_VM" "${WHERE[@]}" --worker=all \
    --command="$(job_command builder realm-index-builder "${BUILDER_ARGS[@]}")"
}
start_trainer() {
  run "${TPU[@]}" ssh "$TRAINER_VM" "${WHERE[@]}" --worker=all \
    --command="$(job_command trainer realm-pretrain "${TRAINER_ARGS[@]}")"
}
echo "# 4. Start the index builder on $BUILDER_VM, the trainer on $TRAINER_VM"
start_builder
start_trainer

# ------------------------------------------------------------- 5. how-to
ssh_hint() {  # VM WORKER COMMAND
  echo "  ${TPU[*]} ssh $1 ${WHERE[*]} --worker=$2 --command=$(quote "$3")"
}
cat <<EOF

# 5. Running$( (( DRY_RUN )) && echo ' (dry run: nothing was started)').
Follow the logs (worker 0; --worker=N for another host, whose log is .wN):
$(ssh_hint "$TRAINER_VM" 0 "tail -f ~/realm_logs/trainer.w0.log")
$(ssh_hint "$BUILDER_VM" 0 "tail -f ~/realm_logs/builder.w0.log")
Metrics: tensorboard --logdir $WORKDIR/logs
Are the jobs alive on every worker:
$(ssh_hint "$TRAINER_VM" all "tmux ls")
Stop (both resume from $WORKDIR when this script is re-run; the builder
also exits by itself once the trainer writes TRAINING_DONE):
$(ssh_hint "$TRAINER_VM" all "tmux kill-session -t realm-trainer")
$(ssh_hint "$BUILDER_VM" all "tmux kill-session -t realm-builder")
Delete the VMs (they are billed until deleted; the workdir stays):
  ${TPU[*]} delete $TRAINER_VM ${WHERE[*]} --quiet
  ${TPU[*]} delete $BUILDER_VM ${WHERE[*]} --quiet
EOF

# ------------------------------------------------------------ 6. --watch
if [[ $WATCH =~ ^0*(\.0*)?$ ]] || (( DRY_RUN )); then
  if [[ ! $WATCH =~ ^0*(\.0*)?$ ]]; then
    echo "# 6. (dry run) would check both VMs every ${WATCH}s until $WORKDIR/TRAINING_DONE exists"
  fi
  exit 0
fi
# The state of a VM, or NOT_FOUND (deleted, or the describe call failed).
vm_state() {
  local found
  found=$("${TPU[@]}" describe "$1" "${WHERE[@]}" \
    --format='value(acceleratorType.basename(),state)' 2>/dev/null) || found=''
  if [[ -z $found ]]; then echo NOT_FOUND; else echo "${found##*[[:space:]]}"; fi
}
echo "# 6. Watching $TRAINER_VM and $BUILDER_VM every ${WATCH}s until $WORKDIR/TRAINING_DONE"
while ! gcloud storage ls "$WORKDIR/TRAINING_DONE" >/dev/null 2>&1; do
  for vm in "$BUILDER_VM" "$TRAINER_VM"; do
    state=$(vm_state "$vm")
    case "$state" in
      READY | CREATING | STARTING | RESTARTING | REPAIRING | STOPPING | DELETING)
        continue ;;  # up, or on its way somewhere: look again next time
    esac
    # PREEMPTED, STOPPED, NOT_FOUND, ...: bring the slice back and restart
    # its job, which resumes from WORKDIR. In a subshell, so that a failure
    # (die included) is retried next time instead of ending the watch.
    echo "# $(date -u +%FT%TZ) $vm is $state: bringing it back"
    if [[ $vm == "$TRAINER_VM" ]]; then
      (ensure_slice "$vm" "$TRAINER_TYPE" && install_on "$vm" && start_trainer)
    else
      (ensure_slice "$vm" "$BUILDER_TYPE" && install_on "$vm" && start_builder)
    fi || echo "# bringing $vm back failed; trying again in ${WATCH}s" >&2
  done
  sleep "$WATCH"
done
echo "# $WORKDIR/TRAINING_DONE exists: training finished; delete the VMs (above)"
