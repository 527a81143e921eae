//! Generated gRPC code for locus. The `.proto` files under `proto/` are the source of truth.

#![allow(clippy::all, missing_docs)]

pub mod v1 {
    tonic::include_proto!("locus.v1");
}
