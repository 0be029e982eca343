//! Integration tests: one binary, the whole service started in-process (or as a process where
//! signals and exit codes are the point) against real services. See `helpers.rs`.

mod helpers;

mod conventions;
mod docs_browser;
mod health;
mod process;
mod supervision;
