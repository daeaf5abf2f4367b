"""Reaching the outside world on a user's behalf: which addresses may be reached, the guarded HTTP client,
bounded bodies, what failures mean, the S3 client, file:// confinement."""
