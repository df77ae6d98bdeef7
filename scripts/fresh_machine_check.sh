#!/usr/bin/env bash
# Fresh-machine check: clone the repository into a new folder, make a new virtual environment and a new, empty
# HOME, then run the README's quick-start commands exactly as written:
#   1. the test command (the ```sh block after "**the test command**"),
#   2. the main job    (the ```sh block after "**the main job**"),
# and fail if either fails, or if the main job's printed final validation loss is worse (higher) than the bound
# the README states ("final validation loss at most X"). See scripts/readme_quickstart.py for the extraction rules.
#
# Usage: scripts/fresh_machine_check.sh [SOURCE]     SOURCE: a git URL or path (default: this repository;
#        only what is committed is cloned, so uncommitted or undeclared files are caught).
# Env:   PYTHON (interpreter for the venv, default python3), TORCH_SPEC (installed first, default torch==2.13.0:
#        the CPU wheel pre-seeded on the project's machines), KEEP=1 keeps the work folder (it is kept on failure).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
src="${1:-$here}"
PY="$("${PYTHON:-python3}" -c 'import sys; print(sys.executable)')"  # resolved before HOME changes (pyenv shims)
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
work="$(mktemp -d "${TMPDIR:-/tmp}/i3_fresh.XXXXXX")"
log="$work/log"; mkdir -p "$log"
t_all=$(date +%s); ok=0
finish() {
  local rc=$?
  if [ $ok = 1 ] && [ "${KEEP:-0}" != 1 ]; then rm -rf "$work"; else echo "work folder kept: $work (logs in $log)"; fi
  echo "== fresh-machine check took $(( $(date +%s) - t_all )) s"
  exit $rc
}
trap finish EXIT
step() { echo "== $(date +%T) $*"; }
fail() { echo "FRESH-MACHINE CHECK FAILED: $*" >&2; exit 1; }

step "clone $src -> $work/i3_edu"
git clone -q "$src" "$work/i3_edu"
cd "$work/i3_edu"
echo "commit $(git rev-parse --short HEAD): $(git log -1 --format=%s)"

# The commands, read from the clone's README before anything runs, so a missing one fails at once.
test_cmd="$("$PY" scripts/readme_quickstart.py README.md test)" || fail "README.md: no test command (see above)"
main_cmd="$("$PY" scripts/readme_quickstart.py README.md main)" || fail "README.md: no main-job command (see above)"
max_loss="$("$PY" scripts/readme_quickstart.py README.md max_val_loss)" || fail "README.md: no validation-loss bound for the main job (see above)"
printf 'test command: %s\nmain job:     %s\nREADME bound: final validation loss <= %s\n' "$test_cmd" "$main_cmd" "$max_loss"

# A new user: empty HOME (no ~/.cache/i3_edu, Hugging Face or wandb state), nothing from this shell's Python setup.
# Only the machine's pip configuration (where the local package mirror is) is carried over.
fresh_home="$work/home"; mkdir -p "$fresh_home"
if [ -f "$HOME/.config/pip/pip.conf" ]; then mkdir -p "$fresh_home/.config/pip"; cp "$HOME/.config/pip/pip.conf" "$fresh_home/.config/pip/"; fi
unset PYTHONPATH VIRTUAL_ENV I3_EDU_CACHE IN_TEST CONDA_PREFIX PIP_USER || true
export HOME="$fresh_home" PIP_DISABLE_PIP_VERSION_CHECK=1
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1  # the machine is offline: fail fast instead of waiting on timeouts

step "new virtual environment ($PY)"
"$PY" -m venv "$work/venv"
# shellcheck disable=SC1091
source "$work/venv/bin/activate"
t=$(date +%s); pip install -q "$TORCH_SPEC" > "$log/torch.log" 2>&1 || { tail -20 "$log/torch.log"; fail "pip install $TORCH_SPEC"; }
echo "   pip install $TORCH_SPEC: $(( $(date +%s) - t )) s"

step "README test command"
t=$(date +%s)
if ! bash -o pipefail -c "$test_cmd" < /dev/null 2>&1 | tee "$log/test_command.log"; then
  fail "the README's test command failed (log: $log/test_command.log)"
fi
t_test=$(( $(date +%s) - t )); echo "   test command: $t_test s"

step "README main job"
t=$(date +%s)
if ! bash -o pipefail -c "$main_cmd" < /dev/null 2>&1 | tee "$log/main_job.log"; then
  fail "the README's main job failed (log: $log/main_job.log)"
fi
t_main=$(( $(date +%s) - t )); echo "   main job: $t_main s"

loss="$("$PY" scripts/readme_quickstart.py --parse-loss "$log/main_job.log")" || fail "could not read the main job's final validation loss"
echo "final validation loss $loss (README: at most $max_loss)"
"$PY" -c "import sys; sys.exit(0 if float('$loss') <= float('$max_loss') else 1)" \
  || fail "final validation loss $loss is worse than the README's $max_loss"
pip check > "$log/pip_check.log" 2>&1 || { cat "$log/pip_check.log"; fail "pip check: broken requirements"; }
ok=1
echo "FRESH-MACHINE CHECK PASSED: test command $t_test s, main job $t_main s, final validation loss $loss <= $max_loss"
