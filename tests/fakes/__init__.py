"""Local fakes of external services for the integration tests: real servers on 127.0.0.1."""
