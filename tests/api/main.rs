//! Integration tests: one binary, the whole service started in-process (or as a process where
//! signals and exit codes are the point) against real services. See `helpers.rs`.

mod helpers;

mod abuse;
mod auth;
mod bridge;
mod config;
mod conventions;
mod docs_browser;
mod event_faults;
mod event_limits;
mod event_support;
mod events;
mod health;
mod identity;
mod preferences;
mod process;
mod supervision;
