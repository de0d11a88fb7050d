//! Webhook intake: parse and check the body, dedupe, queue durably, answer.

pub mod payload;
pub mod routes;

pub use payload::{PayloadError, parse_body};
