//! The integration suite: one binary, one module per concern.

mod auth;
mod budgets;
mod cli;
mod clients;
mod compression;
mod disk_full;
mod event_vectors;
mod faults;
mod fleet;
mod fuzz_regressions;
mod handover;
mod loadgen_runs;
mod manage;
mod metrics;
mod negentropy;
mod plugins;
mod rates;
mod relay;
mod rules;
mod search;
mod startup;
mod storage;
mod support;
