"""Tasks: submit, read, follow (SSE), revoke and delete; what a submission may say and how it is checked."""
