//! Domain controller discovery from DNS SRV records.
