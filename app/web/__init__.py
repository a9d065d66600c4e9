"""The web side of the service: the FastAPI application (``main``), its routes (``api``), the
dashboard, the fast reads, problem+json rendering, request limits, timeouts and rate limits.
It sits on the domain (``app.db``, ``app.services``, ``app.lifecycle`` and the rest of
``app``), which never imports it; the job runners (``workers.jobs``) sit on the same domain
beside it, and neither imports the other."""
