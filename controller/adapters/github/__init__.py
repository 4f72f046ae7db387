"""GitHub: the REST client and webhook events (httpx)."""
