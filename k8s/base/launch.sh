#!/bin/sh
# The `job` container's entry point in an image pod (see docs/SECURITY.md, "Tenant containers
# on KubeRay: the in-pod path"). It runs in the tenant's approved image, unmodified, as an
# unprivileged user with none of the broker's environment: the broker's runner lives in the
# pod's other container (`ray-worker`) and hands over ONE job through a shared directory.
#
# Needs a POSIX sh (dash, busybox ash, bash) and `env`, `mv`, `sleep` (coreutils or busybox);
# `setsid` where present gives the job its own process group. Argument 1 names the handoff
# directory (default /broker/handoff: the pod's emptyDir).
#
# The directory (written by the runner -> read by us, and back):
#   ctl/            the runner's (we may read it, not write it): run.sh (the job's argv and env,
#                   every word single-quoted, renamed into place), notice.json, stop, kill
#   launched        made by us, exclusively, when we take the job: a second take never happens,
#                   not even after this container restarts
#   started         written (renamed into place) once the job's process runs: its pid
#   out.log         the job's stdout and stderr (the runner copies it into the broker's log)
#   exit            the job's exit status (128 + n when killed by signal n), renamed into place
#   lost            beside exit when this container restarted while the job ran (its process
#                   died with the old container)
# Protocol: ctl/stop -> SIGTERM to the job's process group; ctl/kill -> SIGKILL to all of it.
set -u
H=${1:-/broker/handoff}
C=$H/ctl
umask 007 # what we write is the pod's group's (fsGroup): the runner reads it, others nothing

nap() { sleep 0.2 2>/dev/null || sleep 1; }

# Write $2 to file $1 atomically: the runner never reads half of it.
record() { printf '%s\n' "$2" >"$1.tmp" && mv -f "$1.tmp" "$1"; }

# The rest of this container's life: no second job, ever.
idle() {
    trap 'exit 0' TERM INT
    while :; do sleep 3600 & wait $!; done
}

# Send signal $1 to the job ($2): its process group (own session via setsid) or just its pid.
# As PID 1 of the container (Kubernetes), SIGKILL goes to every process here but us, so
# nothing the job left behind (a daemon in its own session) outlives it.
signal_job() {
    kill -"$1" -"$2" 2>/dev/null || kill -"$1" "$2" 2>/dev/null
    if [ "$1" = KILL ] && [ "$$" = 1 ]; then kill -KILL -1 2>/dev/null; fi
}

# Polls for the runner's stop and kill files while the job ($1) runs (the runner cannot
# signal across containers).
watch() {
    termed=
    while :; do
        if [ -e "$C/kill" ]; then signal_job KILL "$1"; return; fi
        if [ -z "$termed" ] && [ -e "$C/stop" ]; then signal_job TERM "$1"; termed=1; fi
        nap
    done
}

while [ ! -f "$C/run.sh" ]; do nap; done

# Take the job exclusively (noclobber: O_EXCL). Found taken: this container restarted.
if ! (set -C && : >"$H/launched") 2>/dev/null; then
    echo "launch.sh: the job of this pod was already started; not starting it again" >&2
    if [ ! -e "$H/exit" ]; then # it died with the previous container
        : >"$H/lost"
        record "$H/exit" 137
    fi
    idle
fi

if [ -e "$C/stop" ] || [ -e "$C/kill" ]; then # stopped before it started
    record "$H/exit" 143
    idle
fi

# The job: run.sh ends in `exec env -- NAME=value... command args...`: its environment is this
# container's own (the image's ENV, as podman gives a container) with the runner's variables for
# the job over it, less what Kubernetes adds to every container (the API server's address,
# KUBERNETES_*). Nothing of the broker's is here to inherit: the runner is the other container.
kubernetes_names() {
    env | while IFS= read -r line; do
        case $line in KUBERNETES_*=*) printf '%s\n' "${line%%=*}" ;; esac
    done
}
for name in $(kubernetes_names); do unset "$name" 2>/dev/null; done
if command -v setsid >/dev/null 2>&1; then
    setsid /bin/sh "$C/run.sh" >>"$H/out.log" 2>&1 </dev/null &
else
    /bin/sh "$C/run.sh" >>"$H/out.log" 2>&1 </dev/null &
fi
pid=$!
record "$H/started" "$pid"
watch "$pid" &
watcher=$!
trap 'signal_job TERM "$pid"' TERM INT # the pod is being deleted: pass it on

# `wait` returns early when a trapped signal arrives: wait again while the job lives.
while :; do
    wait "$pid"
    rc=$?
    kill -0 "$pid" 2>/dev/null || break
done
trap '' TERM INT
kill "$watcher" 2>/dev/null
if [ "$$" = 1 ]; then kill -KILL -1 2>/dev/null; fi # its leftovers end with it, as in podman
record "$H/exit" "$rc"
idle
