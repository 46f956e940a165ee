//! The integration suite: one binary, one module per concern.

mod cli;
mod event_vectors;
mod storage;
mod support;
