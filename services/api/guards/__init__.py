"""What stands before the routes: API keys, rate limits, queue-depth backpressure, the body size limit."""
