# agentdock run wrapper: start a run's process (once) and follow its output. POSIX sh (busybox ash, dash).
#
# The process runs in its own session, detached from this wrapper, with stdin from the prompt and
# stdout/stderr going through pipes into capped files in $AGENTDOCK_RUN_DIR, so the run outlives
# this wrapper (and the daemon that attached to it) and a later wrapper resumes from byte offsets.
# The files keep at most AGENTDOCK_STDOUT_CAP / AGENTDOCK_STDERR_CAP bytes; the rest is drained
# and dropped, so a run that prints without end cannot fill the disk.
# When the process ends, the launcher copies the requested artifacts into $d/artifacts as the run's
# own user (so only what that user can read is exported), then records the exit code.
# It runs as the run's own uid, in the group the runs of its device share: $d is its own (0700), with
# its HOME in it; what the run makes elsewhere is the group's to read and change (umask 002).
# Usage: sh -c "$(cat wrapper.sh)" agentdock-run ARGV...
# Env: AGENTDOCK_RUN_DIR, AGENTDOCK_CWD, AGENTDOCK_PROMPT, AGENTDOCK_REQUIRE (optional),
#      AGENTDOCK_STDOUT_OFFSET, AGENTDOCK_STDERR_OFFSET (resume points, bytes),
#      AGENTDOCK_STDOUT_CAP, AGENTDOCK_STDERR_CAP (bytes kept), AGENTDOCK_ARTIFACTS (one path a line),
#      AGENTDOCK_ARTIFACT_MAX (bytes).
#      AGENTDOCK_CGROUP (optional): the name of the run's own cgroup, which the daemon moves this
#      wrapper into from the host; the wrapper waits (bounded) for it before it starts anything, so
#      every process of the run is born there and `cgroup.kill` ends them all at once.
if [ -n "${AGENTDOCK_CGROUP:-}" ]; then
  # Nothing but a sleep is started until then (the daemon tells this wrapper from a fork of it by
  # the fork's parent); v2 is the last cgroup the daemon moves it to, and it then sends URG (ignored
  # unless trapped), which ends the wait at once.
  sp= woke=
  trap 'woke=1; kill $sp 2>/dev/null' URG
  i=0
  while [ $i -lt 200 ]; do
    moved=
    while IFS= read -r line; do
      case $line in 0::*"/$AGENTDOCK_CGROUP") moved=1 ;; esac
    done </proc/self/cgroup
    [ -n "$moved" ] && break
    i=$((i + 1))
    sleep 0.03 & sp=$!
    [ -n "$woke" ] || wait $sp
    kill $sp 2>/dev/null; woke=
  done
  trap - URG
fi
d=$AGENTDOCK_RUN_DIR
so=${AGENTDOCK_STDOUT_OFFSET:-0}
se=${AGENTDOCK_STDERR_OFFSET:-0}
command -v setsid >/dev/null 2>&1 || setsid() { "$@"; }

mkdir -p "${d%/*}" 2>/dev/null
if mkdir -m 700 "$d" 2>/dev/null; then
  : >"$d/stdout"; : >"$d/stderr"
  # git refuses a repository another uid made ("dubious ownership"): every run's is the group's
  mkdir -m 700 "$d/home" && printf '[safe]\n\tdirectory = *\n' >"$d/home/.gitconfig"
  if [ -n "${AGENTDOCK_REQUIRE:-}" ] && ! command -v "$AGENTDOCK_REQUIRE" >/dev/null 2>&1; then
    echo "agentdock: runtime not found: '$AGENTDOCK_REQUIRE' is not on PATH in this image" >"$d/stderr"
    echo "$AGENTDOCK_REQUIRE" >"$d/missing"
    echo 127 >"$d/exit"
  else
    printf '%s' "$AGENTDOCK_PROMPT" >"$d/prompt"
    # The launcher has its own session, so killing this wrapper leaves it alone; the command has
    # its own session and process group (pid in $d/pid), so TERM/KILL of that group leaves the
    # launcher alive to record the exit code.
    AGENTDOCK_WRAPPER_PID=$$ setsid sh -c '
      d=$1; shift
      umask 002
      mkdir -p "$AGENTDOCK_CWD" 2>/dev/null
      cd "$AGENTDOCK_CWD" || { echo "agentdock: cannot enter $AGENTDOCK_CWD" >>"$d/stderr"; echo 126 >"$d/exit"; exit; }
      echo $$ >"$d/launcher"
      mkfifo "$d/out" "$d/err" || { echo "agentdock: cannot create the output pipes" >>"$d/stderr"; echo 126 >"$d/exit"; exit; }
      # capped N FILE: append stdin to FILE as it arrives, up to N bytes, then drop the rest. GNU dd
      # counts a short read from a pipe as a whole block, so coreutils gets an unbuffered head.
      if command -v stdbuf >/dev/null 2>&1; then
        capped() { stdbuf -o0 head -c "$1" >>"$2"; exec cat >/dev/null; }
      else
        capped() { dd bs=65536 count="$1" iflag=count_bytes oflag=append conv=notrunc of="$2" 2>/dev/null
                   exec cat >/dev/null; }
      fi
      capped "${AGENTDOCK_STDOUT_CAP:-1048577}" "$d/stdout" <"$d/out" & po=$!
      capped "${AGENTDOCK_STDERR_CAP:-1048577}" "$d/stderr" <"$d/err" & pe=$!
      setsid "$@" <"$d/prompt" >"$d/out" 2>"$d/err" &
      c=$!
      echo $c >"$d/pid"
      wait $c
      code=$?
      # The pipes end once every writer closed them. A process the run left behind in its group may
      # hold them open: then the drain gets five seconds before the run ends (the daemon kills what
      # is left). With the group empty nothing should hold them, and a loaded host may just be slow
      # to schedule the cappers: they get a minute (a process that left the group is the cost).
      (trap '\''kill $s; exit'\'' TERM; i=0
       while [ $i -lt 60 ]; do
         sleep 1 & s=$!; wait $s; i=$((i + 1))
         if [ $i -ge 5 ] && kill -0 -$c 2>/dev/null; then break; fi
       done
       kill $po $pe) >/dev/null 2>&1 & k=$!
      wait $po $pe
      kill $k 2>/dev/null
      # What the run made with a private mode (a tool writing through mkstemp makes 0600) is shared with
      # the group, so the next run in the device can read and change it: the workspace is shared.
      find /workspace /tmp -xdev -user "$(id -u)" ! -perm -g+rw -exec chmod g+rwX {} + 2>/dev/null
      if [ -n "${AGENTDOCK_ARTIFACTS:-}" ] && mkdir "$d/artifacts" 2>/dev/null; then
        i=0
        while IFS= read -r p; do
          a="$d/artifacts/$i"
          if [ ! -e "$p" ]; then echo missing >"$a.err"
          elif [ ! -f "$p" ]; then echo not_a_file >"$a.err"
          elif [ ! -r "$p" ]; then echo unreadable >"$a.err"
          else head -c $((AGENTDOCK_ARTIFACT_MAX + 1)) "$p" >"$a" 2>/dev/null || echo unreadable >"$a.err"
          fi
          i=$((i + 1))
        done <<EOF
$AGENTDOCK_ARTIFACTS
EOF
      fi
      echo $code >"$d/exit.tmp" && mv "$d/exit.tmp" "$d/exit"
      # wake the first wrapper, if it still is one (its pid may have been reused after a restart)
      case $(tr "\0" " " <"/proc/$AGENTDOCK_WRAPPER_PID/cmdline" 2>/dev/null) in
        *agentdock-run*) kill -USR1 "$AGENTDOCK_WRAPPER_PID" 2>/dev/null ;;
      esac
    ' agentdock-launcher "$d" "$@" </dev/null >/dev/null 2>&1 &
  fi
elif [ ! -O "$d" ]; then  # made by another (a sibling that guessed the run's id): not followed
  echo "agentdock: $d is not the run's own directory" >&2
  exit 126
fi

emit() {  # emit FILE OFFSET: write FILE's bytes from OFFSET to its current end; sets $n to that end
  n=$(($(wc -c <"$1")))
  if [ "$fin" = 1 ] && [ "$2" = 0 ]; then  # the whole file, which no longer grows
    [ "$n" -gt 0 ] && cat "$1"
    return 0
  fi
  if [ "$n" -gt "$2" ]; then tail -c +$(($2 + 1)) "$1" | head -c $((n - $2)); fi
}

lost() {  # the process and its launcher are gone but recorded no exit code (its container restarted, say)
  [ -s "$d/pid" ] && [ ! -e "$d/exit" ] && ! kill -0 "$(cat "$d/pid")" 2>/dev/null &&
    ! kill -0 "$(cat "$d/launcher" 2>/dev/null)" 2>/dev/null
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
read -r code <"$d/exit"
# The trailer, after everything else on stderr: the follower takes it as proof the stream carried
# the whole output (the offsets it says match what arrived) and as the exit code, sparing it the
# calls that would ask Docker the same (a stream cut short has no trailer).
printf '\036agentdock-end %s %s %s\036' "$so" "$se" "$code" >&2
exit "$code"
