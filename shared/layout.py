"""Names of the files and folders chief and workers share in the state directory."""

FINISHED_MARKER = "ktcluster-finished.json"  # in <state>/<project>/: the search is over
