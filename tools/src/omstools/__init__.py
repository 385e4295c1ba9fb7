"""Developer tooling for the OMS: local broker, supervisor, benchmark."""
