//! `google.pubsub.v1` messages and tonic server traits, generated from the googleapis protos
//! by `rig/pubsub-service/codegen` (see its header for the command) and checked in, so that
//! ordinary builds need neither protoc nor prost-build.
#![allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]

include!("proto/google.pubsub.v1.rs");
