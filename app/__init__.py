"""transferbench's HTTP service (FastAPI). It never imports torch: work goes to the workers."""
