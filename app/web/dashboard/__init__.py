"""The web dashboard served under /dashboard: ``pages`` (routes and ``install``), ``views``
(what each page shows), ``queries`` (the reads the services lack), ``sessions`` (the browser
session behind an API key), ``assets`` (static files and the charting library)."""
