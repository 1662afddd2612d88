#!/bin/sh
# nightly-unenroll: one night's share of a queued bulk unenrollment, run by cron after the
# daily quota resets (00:00 UTC), until the job is done. Install and schedule it:
#
#   install -m 755 examples/nightly-unenroll.sh /usr/local/bin/nightly-unenroll
#   crontab -e:   15 0 * * * /usr/local/bin/nightly-unenroll --reserve 100
#
# Arguments are passed on to `bulk-unenroll run` (--reserve 100, --plan pro, ...).
# Cron runs this with PATH=/usr/bin:/bin, no terminal and no HOME to rely on, so the tool is
# named by its absolute path. Settings (set them at the top of the crontab to change them):
#   BULK_UNENROLL  the installed command; `command -v bulk-unenroll` in your shell prints it
#   UNENROLL_DIR   holds queue/ (tonight's job: queue/unenroll.csv), done/ and logs/
#   KEY_FILE       the LeadLex API key, one line, readable by the cron user only (chmod 600)
#   NOTIFY         your alerting: a command run with the message as its one argument (a script
#                  that calls `mail -s`, posts to a chat webhook, pages someone). Unset, the
#                  message goes to stdout, which cron mails to MAILTO. Each problem is told once,
#                  not every night it lasts.
#
# What each exit code of `bulk-unenroll run` leads to (README: "Exit codes"):
#   0    done: the job moves to done/ (input, results, their companions, the summary)
#   1    done, but rows need a look: moves to done/, and notify once with the report command
#   75   stopped early; the summary's stop_reason says why:
#          quota, max_removals: nothing to do, tomorrow night carries on
#          api_down: notify (once); tomorrow night retries
#   2    bad input or options, 3 key or URL refused, 74 results file busy or unwritable,
#        70 a bug, 130/143 a signal: notify (once); the job stays queued for a person to fix
set -u

BULK_UNENROLL=${BULK_UNENROLL:-/opt/bulk-unenroll/bin/bulk-unenroll}
UNENROLL_DIR=${UNENROLL_DIR:-/srv/unenroll}
KEY_FILE=${KEY_FILE:-/etc/leadlex/key}
JOB=unenroll
RESULTS=queue/$JOB-results.csv
SUMMARY=queue/$JOB-summary.json
NOTICE=logs/$JOB.last-notice

notify() {
    # Once per problem: the same message as last time is not sent again.
    if [ -f "$NOTICE" ] && [ "$(cat "$NOTICE")" = "$1" ]; then
        return
    fi
    printf '%s\n' "$1" >"$NOTICE"
    if [ -n "${NOTIFY:-}" ]; then
        "$NOTIFY" "nightly-unenroll: $1"
    else
        printf 'nightly-unenroll: %s\n' "$1"
    fi
}

archive() {
    # The job and everything that belongs to it: input, results, every RESULTS.* companion
    # (.sent, .lock, ...), the copy kept when a spreadsheet re-saved the results, and the
    # summary. Prints where they went.
    dest=done/$(date -u +%Y%m%dT%H%M%SZ)-$$
    mkdir -p "$dest" || return 1
    for f in "queue/$JOB.csv" "$RESULTS" "$RESULTS".* "queue/$JOB-results.resaved-"*.csv "$SUMMARY"; do
        if [ -e "$f" ]; then
            mv "$f" "$dest/" || return 1
        fi
    done
    rm -f "$NOTICE"
    printf '%s\n' "$dest"
}

cd "$UNENROLL_DIR" || { printf 'nightly-unenroll: cannot cd to %s\n' "$UNENROLL_DIR"; exit 1; }
mkdir -p queue done logs || exit 1
[ -f "queue/$JOB.csv" ] || exit 0 # nothing queued tonight
if [ ! -x "$BULK_UNENROLL" ]; then
    notify "$BULK_UNENROLL is not an executable: set BULK_UNENROLL to the absolute path that \`command -v bulk-unenroll\` prints"
    exit 1
fi

"$BULK_UNENROLL" run "queue/$JOB.csv" --out "$RESULTS" --api-key-file "$KEY_FILE" \
    --summary-json "$SUMMARY" --progress-interval 60 "$@" >>"logs/$JOB.log" 2>&1
code=$?
# The summary is indented JSON, one key a line: no jq needed.
stop_reason=$(sed -n 's/^ *"stop_reason": "\([a-z_]*\)".*/\1/p' "$SUMMARY" 2>/dev/null)
error=$(sed -n 's/^ *"error": "\(.*\)",$/\1/p' "$SUMMARY" 2>/dev/null)
printf '%s nightly-unenroll: exit code %s, stop_reason %s\n' \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$code" "${stop_reason:-unknown}" >>"logs/$JOB.log"

case $code in
0)
    archive >/dev/null || notify "finished, but could not move the job to done/"
    ;;
1)
    if dest=$(archive); then
        notify "finished; rows need a look: $BULK_UNENROLL report $UNENROLL_DIR/$dest/$JOB-results.csv"
    else
        notify "finished with rows that need a look, but could not move the job to done/"
    fi
    ;;
75)
    case $stop_reason in
    quota | max_removals)
        rm -f "$NOTICE" # progress: a later problem is news again
        ;;
    api_down)
        notify "the LeadLex API looked down; the next night retries (see $UNENROLL_DIR/logs/$JOB.log)"
        ;;
    *)
        notify "stopped early ($stop_reason); see $UNENROLL_DIR/logs/$JOB.log"
        ;;
    esac
    ;;
*)
    notify "bulk-unenroll exited $code${error:+: $error}; the job stays queued (see $UNENROLL_DIR/logs/$JOB.log)"
    ;;
esac
exit 0
