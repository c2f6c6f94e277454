"""Submit: runs into the system (submission, human waits) and back on track (resume, reconcile)."""
