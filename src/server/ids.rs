//! Identities that travel between a server's modules and cores. (`ShardId` is storage's,
//! `ConnId` the subscription index's.)

/// A core's number: its executor, its place in the mesh, and (modulo the cores) the owner
/// of shard ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CoreId(pub usize);

impl std::fmt::Display for CoreId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
