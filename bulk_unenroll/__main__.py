from .cli import main

# One program name however it is started, so help and shell completion
# (_BULK_UNENROLL_COMPLETE) read the same as for the installed `bulk-unenroll`.
main(prog_name="bulk-unenroll")
