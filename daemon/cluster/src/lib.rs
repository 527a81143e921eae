//! The cluster view of a locus node.
//!
//! - [`ring`]: consistent hashing (virtual nodes) and the bounded-load choice;
//! - [`view`]: the members as this node sees them (up or down, load), and a [`Plan`] per key:
//!   its primary owner (the one member that fetches it from the origin) and the peers to read
//!   it from, in order;
//! - [`membership`]: where the member list comes from (static, DNS, etcd with leases).
//!
//! Nothing here talks to peers: the node's peer client reports what it sees through
//! [`Cluster::mark_down`] and [`Cluster::mark_up`].

#![deny(missing_docs)]

pub mod membership;
pub mod ring;
pub mod view;

pub use membership::{EtcdSecurity, Membership, MembershipError, MembershipOptions};
pub use ring::{key_hash, Ring};
pub use view::{Cluster, ClusterConfig, LoadGuard, MemberInfo, MemberState, Plan};
