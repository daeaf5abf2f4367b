"""The operator's dashboard: the page, its data read live from NATS, and signing a browser in."""
