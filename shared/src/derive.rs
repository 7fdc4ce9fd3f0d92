//! Seed-compatible PBKDF2 derivation of the PAM-known password (New-Pbkdf2Hash).
