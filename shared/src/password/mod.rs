//! Password evaluation (banned terms) and generation.
