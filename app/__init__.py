"""transferbench's service. Its domain lives here (``db``, ``services``, ``lifecycle``,
``states``, ``tenancy``, ``queue``, ``errors``, ``schemas``), free of any web framework; its web
side (FastAPI) is ``app.web``, and ``app.client`` is the Python client. None of it imports
torch: work goes to the workers."""
