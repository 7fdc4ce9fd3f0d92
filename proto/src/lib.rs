//! pwrelay-proto: the gRPC contract between the relay and its agents.
//!
//! Generated from `pwrelay/agent/v1/agent_link.proto` (the link) and `enrollment.proto`
//! (enrollment and renewal); this crate holds no logic. The field
//! documentation lives in the `.proto` file and is carried into the generated code.

/// `pwrelay.agent.v1`: the agent link.
pub mod agent {
    /// Version 1 of the agent link.
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, clippy::all, missing_debug_implementations)]
        tonic::include_proto!("pwrelay.agent.v1");
    }
}
