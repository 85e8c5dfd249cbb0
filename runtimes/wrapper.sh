# agentdock run wrapper: start a run's process (once) and follow its output. POSIX sh (busybox ash, dash).
#
# The process runs in its own session, detached from this wrapper, with stdin from the prompt and
# stdout/stderr/exit code going to files in $AGENTDOCK_RUN_DIR. So the run outlives this wrapper
# (and the daemon that attached to it); a later wrapper resumes following from byte offsets.
# Usage: sh -c "$(cat wrapper.sh)" agentdock-run ARGV...
# Env: AGENTDOCK_RUN_DIR, AGENTDOCK_CWD, AGENTDOCK_PROMPT, AGENTDOCK_REQUIRE (optional),
#      AGENTDOCK_STDOUT_OFFSET, AGENTDOCK_STDERR_OFFSET (resume points, bytes).
d=$AGENTDOCK_RUN_DIR
so=${AGENTDOCK_STDOUT_OFFSET:-0}
se=${AGENTDOCK_STDERR_OFFSET:-0}
command -v setsid >/dev/null 2>&1 || setsid() { "$@"; }

mkdir -p "${d%/*}" 2>/dev/null
if mkdir "$d" 2>/dev/null; then
  : >"$d/stdout"; : >"$d/stderr"
  if [ -n "${AGENTDOCK_REQUIRE:-}" ] && ! command -v "$AGENTDOCK_REQUIRE" >/dev/null 2>&1; then
    echo "agentdock: runtime not found: '$AGENTDOCK_REQUIRE' is not on PATH in this image" >"$d/stderr"
    echo 127 >"$d/exit"
  else
    printf '%s' "$AGENTDOCK_PROMPT" >"$d/prompt"
    # The launcher has its own session, so killing this wrapper leaves it alone; the command has
    # its own process group (pid in $d/pid), so TERM/KILL of that group leaves the launcher
    # alive to record the exit code.
    AGENTDOCK_WRAPPER_PID=$$ setsid sh -c '
      d=$1; shift
      mkdir -p "$AGENTDOCK_CWD" 2>/dev/null
      cd "$AGENTDOCK_CWD" || { echo "agentdock: cannot enter $AGENTDOCK_CWD" >>"$d/stderr"; echo 126 >"$d/exit"; exit; }
      setsid "$@" <"$d/prompt" >>"$d/stdout" 2>>"$d/stderr" &
      echo $! >"$d/pid"
      wait $!
      echo $? >"$d/exit.tmp" && mv "$d/exit.tmp" "$d/exit"
      # wake the first wrapper, if it still is one (its pid may have been reused after a restart)
      case $(tr "\0" " " <"/proc/$AGENTDOCK_WRAPPER_PID/cmdline" 2>/dev/null) in
        *agentdock-run*) kill -USR1 "$AGENTDOCK_WRAPPER_PID" 2>/dev/null ;;
      esac
    ' agentdock-launcher "$d" "$@" </dev/null >/dev/null 2>&1 &
  fi
fi

emit() {  # emit FILE OFFSET: write FILE's bytes from OFFSET to its current end; sets $n to that end
  n=$(($(wc -c <"$1")))
  if [ "$n" -gt "$2" ]; then tail -c +$(($2 + 1)) "$1" | head -c $((n - $2)); fi
}

lost() {  # the process is gone but recorded no exit code (its container restarted, say)
  [ -s "$d/pid" ] && [ ! -e "$d/exit" ] && ! kill -0 "$(cat "$d/pid")" 2>/dev/null
}

sp=
trap 'kill $sp 2>/dev/null' USR1
while :; do
  if [ ! -e "$d/exit" ]; then
    # Sleep, woken early by the launcher's USR1 when the process ends.
    sleep 0.2 2>/dev/null & sp=$!
    [ -e "$d/exit" ] || wait "$sp"
    kill "$sp" 2>/dev/null
  fi
  fin=0
  [ -e "$d/exit" ] && fin=1
  emit "$d/stdout" "$so"; so=$n
  emit "$d/stderr" "$se" >&2; se=$n
  [ "$fin" = 1 ] && break
  if lost; then
    sleep 1  # the launcher may be writing the exit code right now
    if lost; then
      echo "agentdock: run process lost" >&2
      exit 255
    fi
  fi
done
exit "$(cat "$d/exit")"
