"""The service's work: the job steps (extract, score), the scheduled work, and the two
runners that drive them (Celery workers, or the embedded in-process runner)."""
