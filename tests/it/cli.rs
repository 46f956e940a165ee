//! The offline commands, run as the operator runs them: the real binary on real files.
