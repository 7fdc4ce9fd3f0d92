//! Fixtures for integration tests.
