#!/bin/sh
# A worker stand-in for tests: for the conversation "crashy" it crashes at every start (and
# notes when it started in $BEEP_TEST_SPAWN_LOG); for any other it runs the real worker.
case " $* " in
  *" --conversation crashy "*)
    date +%s.%N >> "$BEEP_TEST_SPAWN_LOG"
    exit 3 ;;
esac
exec "$BEEP_TEST_WORKER" "$@"
