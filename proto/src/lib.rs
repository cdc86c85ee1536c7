//! Lifeboat's wire format: the gRPC services between agents, `lifeboatctl` and the controller.
//!
//! The `.proto` files under `proto/lifeboat/v1` are the source of truth. They are versioned by
//! package (`lifeboat.v1`): a field tag is never reused or changed in meaning; a breaking change is
//! a new package. Messages are converted into validated domain types at the edge (see
//! `lifeboat-controller`'s `wire` module) so that inner code never sees raw protobuf.
#![allow(clippy::all, missing_docs)]

pub mod v1 {
    tonic::include_proto!("lifeboat.v1");
}
