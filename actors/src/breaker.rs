//! breaker (in progress)
