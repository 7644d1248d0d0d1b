# Sourced by the reports/make_*.sh scripts: run COMMAND... echoes it into the notes file "$NOTES" (shown in the
# report), runs it, and notes its wall time.
run() {
  echo "$*" >> "$NOTES"
  echo "+ $*" >&2
  local t0=$SECONDS
  "$@"
  echo "    # $((SECONDS - t0)) s" >> "$NOTES"
}
