"""Services: the API's use cases. They never commit; the request boundary does."""
