"""`restore`: undo a run by re-enrolling the pairs its results file marks `removed`, up to 500
per Add Contacts call (`select` decides what, `job` sends it through the run's machinery)."""
